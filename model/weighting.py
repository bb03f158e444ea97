"""Gradient-guided adaptive loss weighting (UniGRF), a closed-form GradNorm step.

Total loss L = w_ret·L_ret + w_rank·L_rank. Every N steps, with G_k = ‖∇_W L_k‖ on the last shared
layer W and the relative inverse training rate r_k = (L_k(t)/L_k(0)) / mean_j(L_j(t)/L_j(0)):

    target_k = mean_j(w_j·G_j) · r_k^γ           (a slower task, r_k > 1, gets a larger gradient share)
    w_k ← w_k^(1−η) · (target_k / G_k)^η         (multiplicative move toward the weight that hits it)
    w ← K · w / Σ w                              (weights sum to the task count)

With `grad_reference="initial"` (default) every G_k is first divided by its first measured value G_k(0),
so the balance is between each task's gradient *relative to its own scale*: equal training rates keep
the weights where they are, whatever the raw ratio of the two losses' gradients.

No backward through the whole model: only ∂L_k/∂W, which touches the heads and the last layer.

References: UniGRF's gradient-guided adaptive weighter, which balances the convergence of the retrieval and
ranking tasks ("Killing Two Birds with One Stone: Unifying Retrieval and Ranking with a Single Generative
Recommendation Model", SIGIR 2025, arXiv 2504.16454); GradNorm (Chen et al., "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, arXiv 1711.02257), whose target and asymmetry γ
this step takes in closed form instead of by a gradient step on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from genrec.model.config import WeighterConfig
from torch import Tensor


@dataclass
class AdaptiveWeighter:
    cfg: WeighterConfig
    n_tasks: int = 2
    weights: list[float] = field(default_factory=list)
    initial_losses: list[float] | None = None
    smoothed: list[float] | None = None
    initial_grad_norms: list[float] | None = None
    step: int = 0

    def __post_init__(self) -> None:
        if not self.weights:
            self.weights = list(self.cfg.static_weights[: self.n_tasks]) if self.cfg.mode == "static" \
                else [1.0] * self.n_tasks

    def observe(self, losses: list[float]) -> None:
        """Record this step's task losses (plain floats). Keeps an EMA that defines training rates."""
        if self.smoothed is None:
            self.smoothed = list(losses)
        else:
            a = self.cfg.ema
            self.smoothed = [a * s + (1 - a) * x for s, x in zip(self.smoothed, losses, strict=True)]
        if self.initial_losses is None:
            self.initial_losses = list(losses)
        self.step += 1

    def due(self) -> bool:
        return self.cfg.mode == "adaptive" and self.step > 0 and self.step % self.cfg.every == 0

    def update(self, grad_norms: list[float]) -> list[float]:
        """Closed-form update from each task's (unweighted) gradient norm on the last shared layer."""
        if self.cfg.mode != "adaptive" or self.smoothed is None or self.initial_losses is None:
            return self.weights
        ratios = [s / max(l0, 1e-12) for s, l0 in zip(self.smoothed, self.initial_losses, strict=True)]
        mean_ratio = sum(ratios) / len(ratios)
        r = [x / max(mean_ratio, 1e-12) for x in ratios]
        g = [max(x, 1e-12) for x in grad_norms]
        if self.cfg.grad_reference == "initial":
            if self.initial_grad_norms is None:
                self.initial_grad_norms = list(g)
            g = [x / g0 for x, g0 in zip(g, self.initial_grad_norms, strict=True)]
        mean_wg = sum(w * gk for w, gk in zip(self.weights, g, strict=True)) / self.n_tasks
        eta = self.cfg.step
        new = []
        for w, gk, rk in zip(self.weights, g, r, strict=True):
            target_w = mean_wg * rk**self.cfg.gamma / gk
            new.append(w ** (1 - eta) * target_w**eta)
        total = sum(new)
        new = [max(self.n_tasks * x / total, self.cfg.min_weight) for x in new]
        total = sum(new)
        self.weights = [self.n_tasks * x / total for x in new]
        return self.weights

    def state_dict(self) -> dict[str, object]:
        return {"weights": self.weights, "initial_losses": self.initial_losses, "smoothed": self.smoothed,
                "initial_grad_norms": self.initial_grad_norms, "step": self.step}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.weights = [float(x) for x in state["weights"]]  # type: ignore[union-attr]
        self.initial_losses = state.get("initial_losses")  # type: ignore[assignment]
        self.smoothed = state.get("smoothed")  # type: ignore[assignment]
        self.initial_grad_norms = state.get("initial_grad_norms")  # type: ignore[assignment]
        self.step = int(state.get("step", 0))  # type: ignore[arg-type]


def task_grad_norms(losses: list[Tensor], shared: Tensor) -> list[float]:
    """‖∂L_k/∂W‖ for each task loss on the shared parameter W (graph retained for the main backward)."""
    norms = []
    for loss in losses:
        (g,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        norms.append(0.0 if g is None else float(g.norm()))
    return norms
