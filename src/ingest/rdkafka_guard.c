/*
 * A NULL check in front of librdkafka's metadata cache lookup, linked in with
 * -Wl,--wrap=rd_kafka_metadata_cache_find (see build.rs).
 *
 * Why: librdkafka (2.12 to at least 2.16 and master of 2026-07) builds a leader-update op from the
 * tagged fields of a Fetch v16 reply. When that reply names a topic by an all-zero topic id and
 * carries a CurrentLeader tag, the op holds neither an id nor a name, and
 * rd_kafka_metadata_update_op looks the NULL name up in the cache: strcmp(NULL) and SIGSEGV on
 * the rdk:main thread. Tansu 0.6 sends exactly that for a topic deleted while a consumer fetches
 * it (Apache Kafka echoes the requested id instead). With the guard the lookup finds nothing, the
 * op is skipped, and the sidecar learns of the deletion from its own metadata requests.
 */
#include <stddef.h>

struct rd_kafka_s;
struct rd_kafka_metadata_cache_entry;

struct rd_kafka_metadata_cache_entry *
__real_rd_kafka_metadata_cache_find(struct rd_kafka_s *rk, const char *topic, int valid);

struct rd_kafka_metadata_cache_entry *
__wrap_rd_kafka_metadata_cache_find(struct rd_kafka_s *rk, const char *topic, int valid) {
        if (topic == NULL)
                return NULL;
        return __real_rd_kafka_metadata_cache_find(rk, topic, valid);
}
