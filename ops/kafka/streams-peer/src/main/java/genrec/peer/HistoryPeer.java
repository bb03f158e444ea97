package genrec.peer;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * Kafka Streams' version of genrec's ingest: each event's item id appended to its user's list in a persistent
 * (RocksDB, changelogged) store, the list bounded to the last HISTORY_LEN ids. Measures like the Faust ceilings
 * of ops/bench_stream.py: events / (n-th processed - first processed), written as JSON to RESULT_FILE.
 *
 * Usage: HistoryPeer BOOTSTRAP TOPIC APP_ID STATE_DIR N HISTORY_LEN RESULT_FILE [THREADS]
 */
public final class HistoryPeer {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], appId = args[2], stateDir = args[3];
        long n = Long.parseLong(args[4]);
        int historyLen = Integer.parseInt(args[5]);
        Path resultFile = Path.of(args[6]);
        int threads = args.length > 7 ? Integer.parseInt(args[7]) : 1;

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        // genrec commits every second (GENREC_COMMIT_INTERVAL_S); Streams' at-least-once default is 30 s.
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        CountDownLatch done = new CountDownLatch(1);
        long[] count = {0};
        long[] t0 = {0};
        ObjectMapper json = new ObjectMapper();
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore("history"), Serdes.String(), Serdes.String()));
        builder.stream(topic, Consumed.with(Serdes.String(), Serdes.ByteArray()))
                .process(() -> new Processor<String, byte[], Void, Void>() {
                    private KeyValueStore<String, String> store;

                    @Override
                    public void init(ProcessorContext<Void, Void> context) {
                        store = context.getStateStore("history");
                    }

                    @Override
                    public void process(Record<String, byte[]> record) {
                        JsonNode item = readItem(json, record.value());
                        if (record.key() != null && item != null && item.isTextual()) {
                            String old = store.get(record.key());
                            // One id per line, oldest first; drop the oldest beyond historyLen.
                            String list = old == null ? item.asText() : old + "\n" + item.asText();
                            int lines = 1 + (int) list.chars().filter(c -> c == '\n').count();
                            for (; lines > historyLen; lines--) {
                                list = list.substring(list.indexOf('\n') + 1);
                            }
                            store.put(record.key(), list);
                        }
                        synchronized (count) {
                            if (count[0]++ == 0) {
                                t0[0] = System.nanoTime();
                            }
                            if (count[0] == n) {
                                writeResult(resultFile, count[0], (System.nanoTime() - t0[0]) / 1e9);
                                done.countDown();
                            }
                        }
                    }
                }, "history");

        try (KafkaStreams streams = new KafkaStreams(builder.build(), props)) {
            streams.start();
            if (!done.await(Long.getLong("peer.timeout.s", 600), TimeUnit.SECONDS)) {
                System.err.println("timed out after " + count[0] + " of " + n + " events");
                System.exit(1);
            }
            streams.close(Duration.ofSeconds(10));
        }
    }

    private static JsonNode readItem(ObjectMapper json, byte[] value) {
        try {
            return value == null ? null : json.readTree(value).get("item_id");
        } catch (java.io.IOException e) {
            return null; // genrec dead-letters it; the peer only skips it
        }
    }

    private static void writeResult(Path file, long events, double seconds) {
        String out = "{\"mode\": \"kafka_streams\", \"events\": " + events + ", \"seconds\": " + seconds + "}";
        try {
            Files.writeString(file, out, StandardCharsets.UTF_8);
        } catch (java.io.IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }
}
