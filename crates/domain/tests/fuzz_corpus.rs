//! The fuzz targets on stable, in CI: every file of `fuzz/corpus/<target>/` (what the
//! fuzzers found interesting, and every input that once failed) is replayed through the
//! same function the cargo-fuzz target runs, and proptest feeds each target structured
//! inputs that random bytes rarely reach. See docs/TESTING.md.

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Value, json};
use tombstone_domain::fuzzing::{self, WebhookCase};
use tombstone_domain::query::{ListQuery, Position, Sort, SortKey, SortValue, encode_cursor};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("config", fuzzing::config),
    ("list_query", fuzzing::list_query),
    ("cursor", fuzzing::cursor),
    ("merge_patch", fuzzing::merge_patch),
    ("webhook_verify", fuzzing::webhook_verify),
];

#[test]
fn every_corpus_file_replays_without_a_finding() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a corpus entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // A panic names the file, so a CI failure says which input to look at.
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() }
}

/// Some text a user might put anywhere: plausible values, near misses and noise.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z_]{1,12}",
        "-?[0-9]{1,20}",
        "[0-9]{1,3}(ms|s|m|h|d|w|y)",
        Just("2026-01-01T00:00:00Z".to_string()),
        Just("true".to_string()),
        "\\PC{0,12}",
    ]
}

// ---------------------------------------------------------------------------------------
// The config file: documents assembled from real keys, with values right and wrong.

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_map(|t| format!("{t:?}")),
        "-?[0-9]{1,20}",
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[[\"a\"]]".to_string()),
        Just("{}".to_string()),
    ]
}

fn field_line() -> impl Strategy<Value = String> {
    let ty = prop_oneof![
        Just("string"),
        Just("integer"),
        Just("number"),
        Just("boolean"),
        Just("timestamp"),
        Just("json"),
        Just("ref"),
        Just("blob")
    ];
    let option = prop_oneof![
        Just("required = true".to_string()),
        Just("case_insensitive = true".to_string()),
        Just("search = true".to_string()),
        Just("pii = true".to_string()),
        Just("index = true".to_string()),
        "(0|[0-9]{1,3})".prop_map(|n| format!("max_length = {n}")),
        "(a|b|parents|things|keys)".prop_map(|c| format!("collection = \"{c}\"")),
        "(restrict|cascade|orphan|eventual|nope)".prop_map(|o| format!("on_delete = \"{o}\"")),
        ("[a-z_]{1,8}", toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    ("[a-z_][a-z0-9_]{0,8}|id|deleted_at|[A-Z]{1,3}", ty, prop::collection::vec(option, 0..4)).prop_map(
        |(name, ty, options)| {
            let mut parts = vec![format!("type = \"{ty}\"")];
            parts.extend(options);
            format!("{name} = {{ {} }}", parts.join(", "))
        },
    )
}

fn collection_block() -> impl Strategy<Value = String> {
    let setting = prop_oneof![
        "(soft|hard|nope)".prop_map(|d| format!("delete = \"{d}\"")),
        text().prop_map(|r| format!("retention = {r:?}")),
        Just("require_if_match = true".to_string()),
        "[a-z]{1,4}".prop_map(|f| format!("unique = [[\"{f}\"]]")),
    ];
    (
        "[a-z][a-z0-9_]{0,8}|keys|trash|[A-Z]{1,3}|_x",
        prop::collection::vec(setting, 0..3),
        prop::collection::vec(field_line(), 0..5),
    )
        .prop_map(|(name, settings, fields)| {
            format!(
                "[collections.{name}]\n{}\n\n[collections.{name}.fields]\n{}\n",
                settings.join("\n"),
                fields.join("\n")
            )
        })
}

fn config_document() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        toml_value().prop_map(|v| format!("[server]\nlisten = {v}\n")),
        toml_value().prop_map(|v| format!("[storage]\nurl = {v}\n")),
        (toml_value(), toml_value()).prop_map(|(u, t)| format!("[cache]\nurl = {u}\nttl = {t}\n")),
        text().prop_map(|d| format!("[retention]\ndefault = {d:?}\n")),
        toml_value().prop_map(|v| format!("[events]\nnats = {v}\n")),
        (toml_value(), toml_value()).prop_map(|(u, s)| format!("[[webhooks]]\nurl = {u}\nsecret = {s}\n")),
        (toml_value(), toml_value()).prop_map(|(i, b)| format!("[purge]\ninterval = {i}\nbatch = {b}\n")),
        collection_block(),
        "\\PC{0,40}",
    ];
    prop::collection::vec(section, 0..5).prop_map(|sections| sections.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_documents_parse_or_name_the_key_or_line(document in config_document()) {
        fuzzing::config_text(&document);
    }
}

// ---------------------------------------------------------------------------------------
// List parameters and cursors.

fn list_pair() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        Just("limit"),
        Just("cursor"),
        Just("count"),
        Just("include"),
        Just("sort"),
        Just("q"),
        Just("filter[code]"),
        Just("filter[name]"),
        Just("filter[n]"),
        Just("filter[x]"),
        Just("filter[ok]"),
        Just("filter[at]"),
        Just("filter[meta]"),
        Just("filter[parent]"),
        Just("filter[deleted]"),
        Just("filter[deleted_since]"),
        Just("filter[deleted_before]"),
        Just("filter[deleted_by]"),
        Just("filter[purge_before]"),
        Just("filter[nope]"),
        Just("filter["),
    ];
    let value = prop_oneof![
        text(),
        "-?(id|n|name|x|at|meta|created_at|updated_at|deleted_at|nope)",
        Just("deleted".to_string()),
        "[A-Za-z0-9_-]{0,40}",
        (sort_key(), sort_value(), "[a-z0-9-]{0,12}")
            .prop_map(|(sort, v, id)| encode_cursor(&sort, &Position { value: v, id })),
    ];
    (name.prop_map(str::to_string), value)
}

fn sort_key() -> impl Strategy<Value = Sort> {
    let key = prop_oneof![
        Just(SortKey::Id),
        Just(SortKey::CreatedAt),
        Just(SortKey::UpdatedAt),
        Just(SortKey::DeletedAt),
        Just(SortKey::Field("n".into())),
        Just(SortKey::Field("name".into())),
        Just(SortKey::Field("x".into())),
    ];
    (key, any::<bool>()).prop_map(|(key, descending)| Sort { key, descending })
}

fn sort_value() -> impl Strategy<Value = SortValue> {
    prop_oneof![
        Just(SortValue::Null),
        any::<i64>().prop_map(SortValue::Int),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(SortValue::Float),
        "\\PC{0,16}".prop_map(SortValue::Text),
    ]
}

fn sort_param(sort: &Sort) -> String {
    let name = match &sort.key {
        SortKey::Id => "id",
        SortKey::CreatedAt => "created_at",
        SortKey::UpdatedAt => "updated_at",
        SortKey::DeletedAt => "deleted_at",
        SortKey::Field(f) => f.as_str(),
    };
    if sort.descending { format!("-{name}") } else { name.to_string() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn list_parameters_parse_or_name_the_parameter(pairs in prop::collection::vec(list_pair(), 0..6)) {
        fuzzing::list_query_pairs(&pairs);
    }

    #[test]
    fn issued_cursors_read_back_under_their_sort(sort in sort_key(), value in sort_value(), id in "\\PC{0,20}") {
        let position = Position { value, id };
        let cursor = encode_cursor(&sort, &position);
        let pairs = vec![("sort".to_string(), sort_param(&sort)), ("cursor".to_string(), cursor.clone())];
        let q = ListQuery::parse(&fuzzing::collection(), &pairs).expect("an issued cursor parses");
        prop_assert_eq!(q.after, Some(position));
        fuzzing::cursor(cursor.as_bytes());
    }

    #[test]
    fn arbitrary_cursors_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        fuzzing::cursor(&data);
    }
}

// ---------------------------------------------------------------------------------------
// Merge patches.

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-z]{1,3}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn record_body() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        Just("code"),
        Just("name"),
        Just("n"),
        Just("x"),
        Just("ok"),
        Just("at"),
        Just("meta"),
        Just("parent"),
        Just("id"),
        Just("version"),
        Just("nope"),
    ];
    let value = prop_oneof![
        json_value(),
        "[a-z]{1,10}".prop_map(Value::from),
        Just(json!("2026-02-03T04:05:06.123456789+02:00")),
        Just(json!({"a": {"b": null}, "c": [1]})),
    ];
    prop::collection::vec((field, value), 0..6)
        .prop_map(|entries| Value::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn merge_patches_apply_to_a_valid_record_or_are_refused(
        mut create in record_body(),
        patch in prop_oneof![record_body(), json_value()],
        code in "[a-z]{1,8}",
    ) {
        // Most creates should succeed, so that patches meet real records.
        if let Value::Object(map) = &mut create {
            map.entry("code").or_insert(Value::from(code));
        }
        fuzzing::merge_patch_case(&create, &patch);
        let both = serde_json::to_vec(&json!([create, patch])).expect("JSON");
        fuzzing::merge_patch(&both);
    }
}

// ---------------------------------------------------------------------------------------
// Webhook signatures.

fn signature_header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("v1,".to_string()),
        "v1,[A-Za-z0-9+/=]{0,48}",
        "(v1,[A-Za-z0-9+/]{43}= ?){1,3}",
        "\\PC{0,60}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_verifier_accepts_only_the_exact_signature(
        key in prop::collection::vec(any::<u8>(), 0..64),
        id in "\\PC{0,24}",
        timestamp in prop_oneof![any::<i64>(), 1_600_000_000i64..1_900_000_000, Just(i64::MIN), Just(i64::MAX)],
        timestamp_header in prop::option::of(prop_oneof![text(), Just("-9223372036854775808".to_string())]),
        signature_header in signature_header(),
        body in prop::collection::vec(any::<u8>(), 0..128),
        flip in any::<usize>(),
    ) {
        fuzzing::webhook_case(&WebhookCase { key, id, timestamp, timestamp_header, signature_header, body, flip });
    }

    #[test]
    fn arbitrary_webhook_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..160)) {
        fuzzing::webhook_verify(&data);
    }
}
