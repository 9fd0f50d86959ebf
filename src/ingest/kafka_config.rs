//! The librdkafka settings cdc-cache owns: one table of value, reason, and whether a user may
//! override it, used both to build the consumer and to refuse overrides, so the reasons are
//! written once.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::Config;

/// A librdkafka property cdc-cache sets.
#[derive(Debug, Clone, Copy)]
pub struct OwnedSetting {
    pub key: &'static str,
    pub value: &'static str,
    /// Why cdc-cache sets it; also the message when an override is refused.
    pub why: &'static str,
    /// Whether a user's `--kafka-option` may replace the value.
    pub overridable: bool,
}

const fn setting(
    key: &'static str,
    value: &'static str,
    why: &'static str,
    overridable: bool,
) -> OwnedSetting {
    OwnedSetting {
        key,
        value,
        why,
        overridable,
    }
}

/// Every non-default setting, with its reason. `bootstrap.servers` and `client.id` come from
/// flags and are listed apart.
pub const OWNED_SETTINGS: &[OwnedSetting] = &[
    setting(
        "group.id",
        "cdc-cache",
        "assign() still needs a group id, though no group is joined and nothing is committed",
        true,
    ),
    setting(
        "enable.auto.commit",
        "false",
        "the log is the state; cdc-cache never commits offsets",
        false,
    ),
    setting(
        "enable.auto.offset.store",
        "false",
        "the log is the state; cdc-cache never commits offsets",
        false,
    ),
    setting(
        "enable.partition.eof",
        "true",
        "readiness depends on end-of-partition events, which also carry the position past transaction markers at the end of a log",
        false,
    ),
    setting(
        "auto.offset.reset",
        "error",
        "a position outside the log means the log was reset or rewritten: cdc-cache rebuilds the partition instead of letting librdkafka skip on silently",
        false,
    ),
    setting(
        "isolation.level",
        "read_committed",
        "records of aborted transactions must never reach the cache",
        false,
    ),
    setting(
        "statistics.interval.ms",
        "1000",
        "statistics keep the high watermark (lag) and broker liveness current between records",
        true,
    ),
    setting(
        "fetch.queue.backoff.ms",
        "10",
        "during bootstrap the consumer's fetch queue fills faster than records are applied; librdkafka's default then stops fetching a partition for a whole second",
        true,
    ),
    setting(
        "reconnect.backoff.max.ms",
        "2000",
        "a sidecar outage is stale data: reconnect within seconds after a broker restart instead of up to 10 s",
        true,
    ),
];

/// Why a user may not set `key`, if cdc-cache owns it without override.
pub fn refusal(key: &str) -> Option<&'static str> {
    if key == "bootstrap.servers" {
        return Some("use --brokers");
    }
    OWNED_SETTINGS
        .iter()
        .find(|s| s.key == key && !s.overridable)
        .map(|s| s.why)
}

/// Why a user's value for a tunable cdc-cache relies on is refused, if it is.
pub fn bad_value(key: &str, value: &str) -> Option<&'static str> {
    match key {
        // Statistics carry the log bounds that reset detection and broker silence rely on.
        "statistics.interval.ms" => match value.trim().parse::<u64>() {
            Ok(ms) if (100..=2000).contains(&ms) => None,
            _ => Some("must be 100 to 2000 (ms): log-reset detection and broker silence rely on statistics"),
        },
        _ => None,
    }
}

/// True for librdkafka properties whose values must never be logged.
pub fn is_secret_key(key: &str) -> bool {
    ["password", "secret", "jaas", "pem", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// The consumer configuration for every table: the owned settings, then the user's options
/// (which [`crate::config`] has already checked against [`refusal`]).
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set_log_level(RDKafkaLogLevel::Info);
    for owned in OWNED_SETTINGS {
        client.set(owned.key, owned.value);
    }
    for (key, value) in &config.kafka_options {
        client.set(key, value);
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_cannot_be_overridden_and_tuning_can() {
        for key in [
            "bootstrap.servers",
            "enable.auto.commit",
            "enable.auto.offset.store",
            "enable.partition.eof",
            "auto.offset.reset",
            "isolation.level",
        ] {
            assert!(refusal(key).is_some(), "{key}");
        }
        for key in [
            "group.id",
            "statistics.interval.ms",
            "fetch.wait.max.ms",
            "client.id",
        ] {
            assert_eq!(refusal(key), None, "{key}");
        }
    }

    #[test]
    fn statistics_must_stay_frequent() {
        assert_eq!(bad_value("statistics.interval.ms", "500"), None);
        assert!(bad_value("statistics.interval.ms", "0").is_some());
        assert!(bad_value("statistics.interval.ms", "60000").is_some());
        assert!(bad_value("statistics.interval.ms", "soon").is_some());
        assert_eq!(bad_value("fetch.wait.max.ms", "0"), None);
    }

    #[test]
    fn secret_keys_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["security.protocol", "sasl.username", "socket.timeout.ms"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }
}
