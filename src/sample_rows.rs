//! Realistic CDC rows for tests and benchmarks: customer and order rows as Debezium's
//! `ExtractNewRecordState` (or the `after` of an envelope) writes them with the JSON converter,
//! with varied values (names, e-mails, amounts, timestamps, free text) rather than repeated
//! filler, so that compression figures measured on them mean something.

/// A small deterministic generator (xorshift64*): the same seed gives the same rows, with no
/// dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Grace",
    "Alan",
    "Ada",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Frances",
    "Dennis",
    "Radia",
    "Linus",
    "Sophie",
    "John",
    "Hedy",
    "Tim",
    "Katherine",
    "Niklaus",
    "Shafi",
    "Leslie",
    "Mary",
    "Guido",
    "Anita",
    "Bjarne",
    "Jean",
    "Yukihiro",
    "Lynn",
    "James",
    "Karen",
    "Whitfield",
];
const LAST: &[&str] = &[
    "Hopper",
    "Turing",
    "Lovelace",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Allen",
    "Ritchie",
    "Perlman",
    "Torvalds",
    "Wilson",
    "McCarthy",
    "Lamarr",
    "Berners-Lee",
    "Johnson",
    "Wirth",
    "Goldwasser",
    "Lamport",
    "Keller",
    "van Rossum",
    "Borg",
    "Stroustrup",
    "Sammet",
    "Matsumoto",
    "Conway",
    "Gosling",
    "Sparck Jones",
    "Diffie",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "example.io",
    "shop.example",
];
const CITIES: &[&str] = &[
    "Lisbon",
    "Berlin",
    "Osaka",
    "Toronto",
    "Nairobi",
    "Austin",
    "Lyon",
    "Krakow",
    "Melbourne",
    "Bogota",
    "Seoul",
    "Dublin",
    "Chennai",
    "Oslo",
    "Recife",
];
const COUNTRIES: &[&str] = &[
    "PT", "DE", "JP", "CA", "KE", "US", "FR", "PL", "AU", "CO", "KR", "IE", "IN", "NO", "BR",
];
const STREETS: &[&str] = &[
    "Main St",
    "Oak Avenue",
    "Rua Augusta",
    "Hauptstrasse",
    "Elm Road",
    "Station Road",
    "Via Roma",
    "Park Lane",
    "Calle Mayor",
    "Harbour Way",
];
const TIERS: &[&str] = &["free", "basic", "pro", "enterprise"];
const STATUSES: &[&str] = &["pending", "paid", "shipped", "delivered", "cancelled", "refunded"];
const CURRENCIES: &[&str] = &["EUR", "USD", "JPY", "GBP", "BRL"];
const WORDS: &[&str] = &[
    "please",
    "leave",
    "at",
    "the",
    "door",
    "gift",
    "wrap",
    "call",
    "before",
    "delivery",
    "fragile",
    "no",
    "weekend",
    "back",
    "entrance",
    "reception",
    "ring",
    "twice",
];

/// The compact JSON key Debezium writes for a table keyed by `id`.
pub fn key(id: u64) -> String {
    format!(r#"{{"id":{id}}}"#)
}

/// A customer row, about 330 bytes.
pub fn customer(id: u64, rng: &mut Rng) -> String {
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let created = 1_600_000_000_000_000 + rng.below(200_000_000_000_000);
    format!(
        concat!(
            r#"{{"id":{id},"first_name":"{first}","last_name":"{last}","email":"{fl}.{ll}{n}@{domain}","#,
            r#""phone":"+{cc}{phone}","street":"{house} {street}","city":"{city}","country":"{country}","#,
            r#""tier":"{tier}","balance":"{balance}.{cents:02}","marketing_opt_in":{opt},"#,
            r#""created_at":{created},"updated_at":{updated}}}"#
        ),
        id = id,
        first = first,
        last = last,
        created = created,
        fl = first.to_lowercase(),
        ll = last.to_lowercase().replace(' ', ""),
        n = rng.below(1000),
        domain = rng.pick(DOMAINS),
        cc = 1 + rng.below(98),
        phone = 100_000_000 + rng.below(899_999_999),
        house = 1 + rng.below(2000),
        street = rng.pick(STREETS),
        city = rng.pick(CITIES),
        country = rng.pick(COUNTRIES),
        tier = rng.pick(TIERS),
        balance = rng.below(100_000),
        cents = rng.below(100),
        opt = rng.below(2) == 1,
        updated = created + rng.below(10_000_000_000_000),
    )
}

/// An order row, about 300 bytes, sometimes with a free-text note.
pub fn order(id: u64, rng: &mut Rng) -> String {
    let placed = 1_700_000_000_000_000 + rng.below(50_000_000_000_000);
    let note = if rng.below(3) == 0 {
        let words: Vec<&str> = (0..3 + rng.below(6)).map(|_| rng.pick(WORDS)).collect();
        format!("\"{}\"", words.join(" "))
    } else {
        "null".to_string()
    };
    format!(
        concat!(
            r#"{{"id":{id},"customer_id":{customer},"status":"{status}","currency":"{currency}","#,
            r#""total":"{total}.{cents:02}","items":{items},"shipping_city":"{city}","#,
            r#""tracking_code":"{tracking:016X}","note":{note},"placed_at":{placed},"updated_at":{updated}}}"#
        ),
        id = id,
        note = note,
        placed = placed,
        customer = 1 + rng.below(1_000_000),
        status = rng.pick(STATUSES),
        currency = rng.pick(CURRENCIES),
        total = rng.below(5000),
        cents = rng.below(100),
        items = 1 + rng.below(12),
        city = rng.pick(CITIES),
        tracking = rng.next_u64(),
        updated = placed + rng.below(1_000_000_000_000),
    )
}

/// `row` as a Debezium change event from the PostgreSQL connector (JsonConverter, schemas
/// disabled): `before`/`after`/`source`/`op`, about 300 bytes more than the row.
pub fn change_event(row: &str, table: &str, rng: &mut Rng) -> String {
    let ts_ms = 1_795_400_000_000 + rng.below(10_000_000);
    let lsn = 24_000_000 + rng.below(1_000_000_000);
    format!(
        concat!(
            r#"{{"before":null,"after":{row},"source":{{"version":"2.7.3.Final","connector":"postgresql","#,
            r#""name":"shop","ts_ms":{ts_ms},"snapshot":"false","db":"shop","sequence":"[\"{prev}\",\"{lsn}\"]","#,
            r#""schema":"public","table":"{table}","txId":{tx},"lsn":{lsn},"xmin":null}},"op":"{op}","ts_ms":{now}}}"#
        ),
        row = row,
        ts_ms = ts_ms,
        prev = lsn - rng.below(1000),
        lsn = lsn,
        table = table,
        tx = 500 + rng.below(1_000_000),
        op = if rng.below(4) == 0 { "c" } else { "u" },
        now = ts_ms + rng.below(500),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_json_objects_with_varied_values() {
        let mut rng = Rng::new(7);
        let rows: Vec<String> = (0..100).map(|id| customer(id, &mut rng)).collect();
        let orders: Vec<String> = (0..100).map(|id| order(id, &mut rng)).collect();
        for row in rows.iter().chain(&orders) {
            let parsed: serde_json::Value = serde_json::from_str(row).unwrap();
            assert!(parsed.is_object(), "{row}");
        }
        let distinct: std::collections::HashSet<&String> = rows.iter().collect();
        assert_eq!(distinct.len(), rows.len());
        let mean = rows.iter().map(String::len).sum::<usize>() / rows.len();
        assert!((250..400).contains(&mean), "{mean}");
    }

    #[test]
    fn change_events_decode_to_their_row() {
        let mut rng = Rng::new(3);
        let row = customer(42, &mut rng);
        let event = change_event(&row, "customers", &mut rng);
        let parsed: serde_json::Value = serde_json::from_str(&event).unwrap();
        assert_eq!(
            parsed["after"],
            serde_json::from_str::<serde_json::Value>(&row).unwrap()
        );
        assert!(matches!(parsed["op"].as_str(), Some("c" | "u")));
        let decoded = crate::format::decode(
            crate::format::Format::Debezium,
            Some(key(42).as_bytes()),
            Some(event.as_bytes()),
        )
        .unwrap();
        let crate::store::Change::Upsert { key: k, value } = decoded else {
            panic!("an upsert");
        };
        assert_eq!(k, key(42).as_bytes());
        assert_eq!(value, row.as_bytes());
    }
}
