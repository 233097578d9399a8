//! The OpenAPI 3.1 document served at `/openapi.json`, built from the configured schema.
//!
//! Record endpoints are generic in the router (`/v1/{collection}`) but concrete in the
//! document: every configured collection gets its own paths, a component schema of its
//! records (system fields and declared fields with their JSON types), a `New…` schema for
//! create bodies, a `…Patch` schema for merge patches and a `…List` schema for pages, so a
//! client generator sees real types and a new collection appears without touching this file.
//! Fixed shapes (the problem document, keys, the deletion plan, audit entries, event
//! envelopes, webhook deliveries) are components too, and every documented error answers
//! `application/problem+json` with the `Problem` schema. Statuses that only some
//! collections can produce (428 where `require_if_match`, 409 `restrict` where another
//! collection restricts deletes) are documented only there.
//!
//! What the document promises is checked against the router by `tests/openapi.rs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tombstone_domain::audit::AuditAction;
use tombstone_domain::config::{Collection, DeleteMode, Field, FieldType, FileRules, OnDelete, Schema};
use tombstone_domain::events::EventType;
use tombstone_domain::query::{DEFAULT_LIMIT, MAX_LIMIT};
use tombstone_domain::record::SYSTEM_KEYS;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, Ref, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, RefOr, Required};

use crate::app::BODY_LIMIT;
use crate::error::PROBLEM_JSON;

/// The name of the security scheme every authenticated operation requires.
pub const SECURITY_SCHEME: &str = "bearer";

/// The component name of the error document.
pub const PROBLEM_SCHEMA: &str = "Problem";

/// Component names of the fixed shapes; collection schemas never take one of these.
const FIXED_SCHEMAS: &[&str] = &[
    PROBLEM_SCHEMA,
    "FieldError",
    "RecordRef",
    "DeletionPlan",
    "Hold",
    "Key",
    "NewKey",
    "CreatedKey",
    "KeyList",
    "Status",
    "AuditEntry",
    "AuditList",
    "Event",
    "EventList",
    "Delivery",
    "DeliveryList",
    "WebhookEndpoint",
    "WebhookEndpointList",
    "WebhookEndpointEnabled",
    "HoldRequest",
    "ArchiveRequest",
    "ErasureReceipt",
    "TrashList",
    "PurgePreview",
    "PurgeState",
];

/// Problem `type` slugs a client may meet (RFC 9457 `type`, a relative URI reference).
const PROBLEM_TYPES: &[&str] = &[
    "malformed",
    "invalid-parameter",
    "unauthorized",
    "forbidden",
    "not-found",
    "method-not-allowed",
    "unique-conflict",
    "restrict",
    "parent-deleted",
    "legal-hold",
    "archived",
    "not-deleted",
    "idempotency-conflict",
    "event-gone",
    "endpoint-removed",
    "erased",
    "request-timeout",
    "precondition-failed",
    "payload-too-large",
    "unsupported-media-type",
    "range-not-satisfiable",
    "validation",
    "idempotency-mismatch",
    "precondition-required",
    "internal",
    "unavailable",
    "busy",
    "storage-full",
    "storage-unavailable",
];

/// The document for this schema, as JSON.
#[must_use]
pub fn document(schema: &Schema) -> Value {
    // The document is plain data (strings, maps, numbers): serializing it cannot fail.
    serde_json::to_value(openapi(schema)).unwrap_or_else(|e| json!({"openapi": "3.1.0", "error": e.to_string()}))
}

/// The document for this schema.
#[must_use]
pub fn openapi(schema: &Schema) -> OpenApi {
    let names = SchemaNames::for_schema(schema);
    let mut paths = PathsBuilder::new();
    let mut components = fixed_components();
    let mut tags = Vec::new();

    for (name, collection) in &schema.collections {
        let n = &names.0[name];
        tags.push(TagBuilder::new().name(name.as_str()).description(Some(collection_description(collection))).build());
        components = components
            .schema(n.record.clone(), record_schema(collection))
            .schema(n.new.clone(), new_record_schema(collection))
            .schema(n.patch.clone(), patch_schema(collection))
            .schema(n.list.clone(), list_schema(collection, n));
        let base = format!("/v1/{name}");
        let item = format!("{base}/{{id}}");
        paths = paths
            .path(&base, PathItem::new(HttpMethod::Get, list_operation(collection, n)))
            .path(&base, PathItem::new(HttpMethod::Post, create_operation(collection, n)))
            .path(&item, PathItem::new(HttpMethod::Get, get_operation(collection, n)))
            .path(&item, PathItem::new(HttpMethod::Patch, update_operation(collection, n)))
            .path(&item, PathItem::new(HttpMethod::Delete, delete_operation(schema, collection)))
            .path(format!("{item}:restore"), PathItem::new(HttpMethod::Post, restore_operation(collection, n)))
            .path(format!("{item}:purge"), PathItem::new(HttpMethod::Post, purge_operation(collection)))
            .path(format!("{item}:erase"), PathItem::new(HttpMethod::Post, erase_operation(collection)))
            .path(format!("{item}:hold"), PathItem::new(HttpMethod::Post, hold_operation(collection)))
            .path(format!("{item}:release"), PathItem::new(HttpMethod::Post, release_operation(collection, n)))
            .path(format!("{item}:archive"), PathItem::new(HttpMethod::Post, archive_operation(collection, n, true)))
            .path(format!("{item}:unarchive"), PathItem::new(HttpMethod::Post, archive_operation(collection, n, false)))
            .path(format!("{item}:revert"), PathItem::new(HttpMethod::Post, revert_operation(collection, n)))
            .path(format!("{item}/versions"), PathItem::new(HttpMethod::Get, versions_operation(collection, n)))
            .path(
                format!("{item}/versions/{{version}}"),
                PathItem::new(HttpMethod::Get, version_operation(collection, n)),
            );
        for field in collection.fields.values() {
            if let FieldType::File(rules) = &field.ty {
                let path = format!("{item}/files/{}", field.name);
                paths = paths
                    .path(&path, PathItem::new(HttpMethod::Put, put_file_operation(collection, n, field, rules)))
                    .path(&path, PathItem::new(HttpMethod::Get, get_file_operation(collection, field)))
                    .path(&path, PathItem::new(HttpMethod::Delete, delete_file_operation(collection, n, field)));
            }
        }
    }

    paths = retention_paths(paths, schema);
    components = retention_components(components, schema, &names);
    paths = key_paths(paths);
    paths = audit_paths(paths);
    paths = event_paths(paths, schema);
    paths = webhook_paths(paths);
    paths = deletion_paths(paths);
    components = feed_components(components);
    paths = system_paths(paths);
    paths = dashboard_paths(paths);
    tags.push(
        TagBuilder::new()
            .name("retention")
            .description(Some("The trash across collections, and control of the purge worker."))
            .build(),
    );
    tags.push(TagBuilder::new().name("keys").description(Some("API keys (admin scope).")).build());
    tags.push(
        TagBuilder::new()
            .name("audit")
            .description(Some("The hash-chained, append-only audit log: no method changes it (405)."))
            .build(),
    );
    tags.push(
        TagBuilder::new()
            .name("events")
            .description(Some("The tenant's events in commit order: a feed, a live stream, webhook deliveries."))
            .build(),
    );
    tags.push(
        TagBuilder::new()
            .name("dashboard")
            .description(Some("Who the key is and what it can see: what the dashboard at /ui/ starts from."))
            .build(),
    );
    tags.push(
        TagBuilder::new().name("system").description(Some("Health, metrics and this document; no key needed.")).build(),
    );

    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Tombstone")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A data API in which delete is safe by default: every DELETE is a soft delete that can be \
                     restored within the collection's recovery window. Every error is \
                     `application/problem+json` (RFC 9457); every response carries `X-Request-Id`.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some([SecurityRequirement::new(SECURITY_SCHEME, Vec::<String>::new())]))
        .tags(Some(tags))
        .build()
}

// ---------------------------------------------------------------------------------------
// Component names

/// The component names of one collection's schemas.
struct CollectionNames {
    record: String,
    new: String,
    patch: String,
    list: String,
}

impl CollectionNames {
    fn from_base(base: &str) -> Self {
        Self {
            record: base.to_string(),
            new: format!("New{base}"),
            patch: format!("{base}Patch"),
            list: format!("{base}List"),
        }
    }

    fn all(&self) -> [&String; 4] {
        [&self.record, &self.new, &self.patch, &self.list]
    }
}

/// Component names per collection: `cart_items` → `CartItems`, `NewCartItems`, … A name
/// that would clash (with a fixed shape, or with another collection's derived name such as
/// `new_products` against `NewProducts`) gets a numeric suffix, in config order.
struct SchemaNames(HashMap<String, CollectionNames>);

impl SchemaNames {
    fn for_schema(schema: &Schema) -> Self {
        let mut used: HashSet<String> = FIXED_SCHEMAS.iter().map(|s| (*s).to_string()).collect();
        let mut names = HashMap::new();
        for name in schema.collections.keys() {
            let pascal = pascal_case(name);
            let mut candidate = CollectionNames::from_base(&pascal);
            let mut n = 1;
            while candidate.all().iter().any(|s| used.contains(*s)) {
                n += 1;
                candidate = CollectionNames::from_base(&format!("{pascal}_{n}"));
            }
            used.extend(candidate.all().into_iter().cloned());
            names.insert(name.clone(), candidate);
        }
        Self(names)
    }
}

fn pascal_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

// ---------------------------------------------------------------------------------------
// Schemas

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(ty: Type) -> SchemaType {
    SchemaType::from_iter([ty, Type::Null])
}

fn date_time() -> ObjectBuilder {
    string().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

fn integer() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

fn boolean() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Boolean)
}

fn array_of(items: impl Into<RefOr<utoipa::openapi::Schema>>) -> ArrayBuilder {
    ArrayBuilder::new().items(items.into())
}

fn record_id() -> ObjectBuilder {
    string().pattern(Some("^[A-Za-z0-9_-]{1,128}$")).min_length(Some(1)).max_length(Some(128))
}

fn closed(object: ObjectBuilder) -> ObjectBuilder {
    object.additional_properties(Some(AdditionalProperties::<utoipa::openapi::Schema>::FreeForm(false)))
}

/// `30d`, `12h`, `90s`: the largest unit that divides the duration.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn on_delete_name(on_delete: OnDelete) -> &'static str {
    match on_delete {
        OnDelete::Restrict => "restrict",
        OnDelete::Cascade => "cascade",
        OnDelete::Orphan => "orphan",
        OnDelete::Eventual => "eventual",
    }
}

fn collection_description(collection: &Collection) -> String {
    let mut text = match collection.delete {
        DeleteMode::Soft => format!(
            "Records of `{}`. DELETE is a soft delete, restorable for {}; then the record is purged.",
            collection.name,
            human_duration(collection.retention)
        ),
        DeleteMode::Hard => format!(
            "Records of `{}`, a hard-delete collection: DELETE removes a record at once; there is no trash and \
             no restore.",
            collection.name
        ),
    };
    for set in &collection.unique {
        text.push_str(&format!(" Unique among active records of a tenant: ({}).", set.join(", ")));
    }
    if collection.require_if_match {
        text.push_str(" PATCH, DELETE and :restore require `If-Match`.");
    }
    text
}

/// The schema of one declared field's value. `nullable` when the field may be null (absent).
fn field_schema(field: &Field, nullable_value: bool) -> RefOr<utoipa::openapi::Schema> {
    let ty = |t: Type| if nullable_value { nullable(t) } else { SchemaType::new(t) };
    let mut notes: Vec<String> = Vec::new();
    let object = match &field.ty {
        FieldType::String => {
            if field.case_insensitive {
                notes.push("case-insensitive for filters and uniqueness".into());
            }
            if field.search {
                notes.push("full-text indexed".into());
            }
            string().schema_type(ty(Type::String)).max_length(field.max_length)
        }
        FieldType::Integer => integer().schema_type(ty(Type::Integer)),
        FieldType::Number => ObjectBuilder::new()
            .schema_type(ty(Type::Number))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
        FieldType::Boolean => boolean().schema_type(ty(Type::Boolean)),
        FieldType::Timestamp => {
            notes.push("RFC 3339, stored and returned in UTC".into());
            date_time().schema_type(ty(Type::String))
        }
        FieldType::Json => {
            notes.push("any JSON value; PATCH merges objects recursively (RFC 7396)".into());
            ObjectBuilder::new().schema_type(SchemaType::AnyValue)
        }
        FieldType::File(rules) => {
            notes.push(format!(
                "a stored file's metadata, read-only here: upload with `PUT …/files/{}` (at most {} bytes{}), \
                 remove with `DELETE` there",
                field.name,
                rules.max_bytes,
                if rules.content_types.is_empty() {
                    String::new()
                } else {
                    format!("; {}", rules.content_types.join(", "))
                }
            ));
            ObjectBuilder::new()
                .schema_type(ty(Type::Object))
                .property("content_type", string())
                .property("size", integer().minimum(Some(0)))
                .property("sha256", string().pattern(Some("^[0-9a-f]{64}$")))
                .property("uploaded_at", date_time())
                .required("content_type")
                .required("size")
                .required("sha256")
                .required("uploaded_at")
                .additional_properties(Some(AdditionalProperties::<utoipa::openapi::Schema>::FreeForm(false)))
        }
        FieldType::Ref { collection, on_delete } => {
            notes.push(format!(
                "id of a `{collection}` record; deleting that record: {}",
                match on_delete {
                    OnDelete::Restrict => "refused while this record is active (409 `restrict`)",
                    OnDelete::Cascade => "deletes this record too, in the same operation",
                    OnDelete::Orphan => "keeps this record and the id",
                    OnDelete::Eventual => "deletes this record soon after, in the background",
                }
            ));
            record_id().schema_type(ty(Type::String)).extensions(Some(
                utoipa::openapi::extensions::ExtensionsBuilder::new()
                    .add("x-tombstone-ref", json!({"collection": collection, "on_delete": on_delete_name(*on_delete)}))
                    .build(),
            ))
        }
    };
    if field.pii {
        notes.push("personal data: scrubbed by erasure, kept out of events and audit".into());
    }
    let description = (!notes.is_empty()).then(|| {
        let mut text = notes.join("; ");
        if let Some(first) = text.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        text + "."
    });
    object.description(description).into()
}

/// The representation of a record: system fields, then declared fields. Every declared
/// field is always present (null when unset), so all are `required`; optional ones are
/// nullable.
fn record_schema(collection: &Collection) -> ObjectBuilder {
    let nullable_time = || date_time().schema_type(nullable(Type::String));
    let mut object = ObjectBuilder::new()
        .title(Some(collection.name.clone()))
        .description(Some(collection_description(collection)))
        .property("id", record_id().description(Some("UUIDv7 unless the creator supplied one.")))
        .property("collection", string().enum_values(Some([collection.name.as_str()])))
        .property(
            "version",
            integer().minimum(Some(1)).description(Some("Incremented by every change, delete and restore.")),
        )
        .property("created_at", date_time())
        .property("updated_at", date_time())
        .property("deleted", boolean())
        .property("deleted_at", nullable_time())
        .property(
            "deleted_by",
            string().schema_type(nullable(Type::String)).description(Some("The deleting key's id.")),
        )
        .property("delete_reason", string().schema_type(nullable(Type::String)).max_length(Some(500)))
        .property("deletion_id", string().schema_type(nullable(Type::String)))
        .property("purge_at", nullable_time().description(Some("End of the recovery window: restorable until then.")))
        .property("archived", boolean().description(Some("Archived (§17): out of lists unless asked, read-only.")))
        .property("archived_at", nullable_time())
        .property(
            "archived_by",
            string()
                .schema_type(nullable(Type::String))
                .description(Some("The archiving key's id, or `system` for `archive_after`.")),
        )
        .property("archive_reason", string().schema_type(nullable(Type::String)).max_length(Some(500)))
        .property("legal_hold", boolean())
        .property(
            "holds",
            array_of(schema_ref("Hold")).description(Some("Active legal holds; present for keys with `read_deleted`.")),
        );
    for name in SYSTEM_KEYS {
        object = object.required(name);
    }
    for field in collection.fields.values() {
        object = object.property(&field.name, field_schema(field, !field.required)).required(&field.name);
    }
    object
}

/// A create body: declared fields (null means absent) and an optional client-chosen id.
fn new_record_schema(collection: &Collection) -> ObjectBuilder {
    let mut object = closed(ObjectBuilder::new())
        .title(Some(format!("new {}", collection.name)))
        .description(Some(format!("The body of `POST /v1/{}`.", collection.name)))
        .property(
            "id",
            record_id().description(Some(
                "Optional; an id already used in this tenant and collection, deleted or not, is a 409 \
                 `unique-conflict`.",
            )),
        );
    for field in collection.fields.values() {
        object = object.property(&field.name, body_field_schema(field));
        if field.required {
            object = object.required(&field.name);
        }
    }
    object
}

/// A field as a request body may hold it: a file field only as `null` (its bytes go
/// through `PUT …/files/{field}`).
fn body_field_schema(field: &Field) -> RefOr<utoipa::openapi::Schema> {
    if matches!(field.ty, FieldType::File(_)) {
        return ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::Null))
            .description(Some(format!(
                "A file: only null here (removes it); upload with `PUT …/files/{}`.",
                field.name
            )))
            .into();
    }
    field_schema(field, !field.required)
}

/// A JSON merge patch (RFC 7396): `null` removes a value, which required fields refuse.
fn patch_schema(collection: &Collection) -> ObjectBuilder {
    let mut object = closed(ObjectBuilder::new()).title(Some(format!("{} patch", collection.name))).description(Some(
        "A JSON merge patch (RFC 7396) of declared fields: members replace values, `null` removes one \
         (refused for required fields); system fields are read-only.",
    ));
    for field in collection.fields.values() {
        object = object.property(&field.name, body_field_schema(field));
    }
    object
}

fn list_schema(collection: &Collection, names: &CollectionNames) -> ObjectBuilder {
    ObjectBuilder::new()
        .title(Some(format!("{} page", collection.name)))
        .property("items", array_of(schema_ref(&names.record)))
        .property(
            "next_cursor",
            string()
                .schema_type(nullable(Type::String))
                .description(Some("Pass as `cursor` for the next page; null at the end.")),
        )
        .property("total", integer().minimum(Some(0)).description(Some("Present with `count=true`.")))
        .required("items")
        .required("next_cursor")
}

fn record_ref_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .property("collection", string())
        .property("id", record_id())
        .required("collection")
        .required("id")
}

fn problem_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .title(Some("problem"))
        .description(Some("An RFC 9457 problem document; the members after `request_id` appear where they apply."))
        .property(
            "type",
            string()
                .description(Some(format!("A stable slug: {}.", PROBLEM_TYPES.join(", "))))
                .examples(["not-found", "validation"]),
        )
        .property("title", string())
        .property("status", ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(400)).maximum(Some(599)))
        .property("detail", string())
        .property("request_id", string().description(Some("Also in `X-Request-Id`; quote it when reporting.")))
        .property(
            "conflicting_id",
            record_id().description(Some("409 `unique-conflict`: the active record holding the value.")),
        )
        .property("fields", array_of(string()).description(Some("409 `unique-conflict`: the unique set.")))
        .property(
            "errors",
            array_of(schema_ref("FieldError")).description(Some("400 and 422: what is wrong, per field.")),
        )
        .property("missing_scope", string().description(Some("403: the bare scope the key lacks, e.g. `delete`.")))
        .property("current_etag", string().description(Some("412: the current `ETag`.")))
        .property(
            "blockers",
            array_of(schema_ref("RecordRef")).description(Some("409 `restrict` and `parent-deleted`.")),
        )
        .property("blockers_total", integer().minimum(Some(0)))
        .required("type")
        .required("title")
        .required("status")
        .required("detail")
        .required("request_id")
}

fn key_schema(with_secret: bool) -> ObjectBuilder {
    let mut object = ObjectBuilder::new()
        .property("id", string().examples(["key_0190a3c27b1e7c3d9a513f1f2a4b5c6d"]))
        .property("tenant", string())
        .property("name", string().schema_type(nullable(Type::String)))
        .property("scopes", array_of(string().examples(["read", "delete:products"])))
        .property("created_at", date_time());
    for name in ["id", "tenant", "name", "scopes", "created_at"] {
        object = object.required(name);
    }
    if with_secret {
        object = object
            .property("secret", string().description(Some("`tsk_…`: shown once, never again.")))
            .required("secret");
    }
    object
}

fn fixed_components() -> ComponentsBuilder {
    ComponentsBuilder::new()
        .security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tsk_…")
                    .description(Some("`Authorization: Bearer <secret>`; create keys with `tombstone keys create`."))
                    .build(),
            ),
        )
        .schema(PROBLEM_SCHEMA, problem_schema())
        .schema(
            "FieldError",
            ObjectBuilder::new()
                .property("field", string())
                .property("message", string())
                .required("field")
                .required("message"),
        )
        .schema("RecordRef", record_ref_schema())
        .schema(
            "DeletionOperation",
            ObjectBuilder::new()
                .description(Some("What one DELETE took, its status and how far it has propagated."))
                .property("id", string())
                .property("status", string().enum_values(Some(["pending", "done"])))
                .property("actor", string())
                .property("reason", string().schema_type(nullable(Type::String)))
                .property("created_at", date_time())
                .property("root", schema_ref("RecordRef"))
                .property(
                    "records",
                    array_of(schema_ref("RecordRef"))
                        .description(Some("One page of the records: the root first, then by collection and id.")),
                )
                .property(
                    "records_next_cursor",
                    string()
                        .schema_type(nullable(Type::String))
                        .description(Some("Where the next page of `records` starts (`?cursor=`); null on the last.")),
                )
                .property("records_total", integer().minimum(Some(1)))
                .property(
                    "pending_relations",
                    integer()
                        .minimum(Some(0))
                        .description(Some("Relations the eventual cascade still has to work through (0 once done).")),
                )
                .property("counts", ObjectBuilder::new().additional_properties(Some(integer())))
                .property("restorable_until", date_time().schema_type(nullable(Type::String)))
                .property(
                    "propagation",
                    ObjectBuilder::new()
                        .description(Some(
                            "Per sink (outbox, cache, search, webhooks by endpoint id, nats when configured): `status` \
                             (done, pending or failed) and `last_error`, a class such as `timeout`, `connect` or `http 500`; never a URL.",
                        ))
                        .additional_properties(Some(ObjectBuilder::new())),
                )
                .required("id")
                .required("status")
                .required("root")
                .required("records")
                .required("records_next_cursor")
                .required("records_total")
                .required("counts")
                .required("propagation"),
        )
        .schema(
            "RestoredOperation",
            ObjectBuilder::new()
                .property("deletion_id", string())
                .property("restored", integer())
                .property("items", array_of(ObjectBuilder::new()).description(Some("The records restored.")))
                .property("next_cursor", string().schema_type(nullable(Type::String)))
                .required("deletion_id")
                .required("restored")
                .required("items"),
        )
        .schema(
            "DeletionPlan",
            ObjectBuilder::new()
                .description(Some("What a DELETE would do (`dry_run=true`); nothing is changed."))
                .property("root", schema_ref("RecordRef"))
                .property(
                    "would_delete",
                    array_of(schema_ref("RecordRef")).description(Some(
                        "The root first, then every cascaded record (the first 100; `would_delete_total` counts all).",
                    )),
                )
                .property("would_delete_total", integer().minimum(Some(0)))
                .property("blockers", array_of(schema_ref("RecordRef")))
                .property("blockers_total", integer().minimum(Some(0)))
                .property("orphaned", array_of(schema_ref("RecordRef")).description(Some("The first 100.")))
                .property("orphaned_total", integer().minimum(Some(0)))
                .property(
                    "eventual",
                    array_of(schema_ref("RecordRef")).description(Some(
                        "Records an eventual cascade would delete after the DELETE answers (the first 100), \
                         including the part of a cascade past `relations.max_immediate_cascade`.",
                    )),
                )
                .property("eventual_total", integer().minimum(Some(0)))
                .property(
                    "counts",
                    ObjectBuilder::new()
                        .description(Some("Records per collection, the root included."))
                        .additional_properties(Some(integer())),
                )
                .required("root")
                .required("would_delete")
                .required("blockers")
                .required("orphaned")
                .required("counts"),
        )
        .schema(
            "Hold",
            ObjectBuilder::new()
                .property("hold_id", string())
                .property("case", string().schema_type(nullable(Type::String)))
                .property("reason", string().schema_type(nullable(Type::String)))
                .property("actor", string())
                .property("at", date_time())
                .required("hold_id")
                .required("actor")
                .required("at"),
        )
        .schema("Key", key_schema(false))
        .schema("CreatedKey", key_schema(true))
        .schema(
            "NewKey",
            closed(ObjectBuilder::new())
                .property(
                    "tenant",
                    nullable_string()
                        .description(Some(
                            "The calling key's tenant (the default, also when null); any other is a 403.",
                        ))
                        .pattern(Some("^[A-Za-z0-9_-]{1,64}$")),
                )
                .property(
                    "scopes",
                    utoipa::openapi::schema::OneOfBuilder::new()
                        .item(array_of(string()))
                        .item(string().description(Some("Comma-separated.")))
                        .examples([json!(["read", "delete:products"])]),
                )
                .property("name", string().max_length(Some(200)))
                .required("scopes"),
        )
        .schema(
            "KeyList",
            ObjectBuilder::new()
                .property("items", array_of(schema_ref("Key")))
                .property("next_cursor", string().schema_type(nullable(Type::String)))
                .required("items")
                .required("next_cursor"),
        )
        .schema("Status", ObjectBuilder::new().property("status", string()).required("status"))
}

// ---------------------------------------------------------------------------------------
// Parameters, headers, responses

fn query(name: &str, schema: impl Into<RefOr<utoipa::openapi::Schema>>, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

fn header_param(name: &str, required: bool, description: &str) -> Parameter {
    header_param_of(name, required, string(), description)
}

fn header_param_of(name: &str, required: bool, schema: ObjectBuilder, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(if required { Required::True } else { Required::False })
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

fn id_param(description: &str) -> Parameter {
    ParameterBuilder::new()
        .name("id")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(record_id()))
        .description(Some(description))
        .build()
}

fn if_match_param(collection: &Collection, action: &str) -> Parameter {
    let text = if collection.require_if_match {
        format!(
            "Required by this collection (428 without it). The record's `ETag`; stale → 412 and nothing is {action}."
        )
    } else {
        format!("The record's `ETag`; stale → 412 and nothing is {action}.")
    };
    header_param("If-Match", collection.require_if_match, &text)
}

fn reason_param(what: &str) -> Parameter {
    query("reason", string().max_length(Some(500)), &format!("Why; recorded with the {what} (at most 500 characters)."))
}

fn response_header(description: &str) -> Header {
    HeaderBuilder::new().schema(string()).description(Some(description)).build()
}

/// A response with `X-Request-Id`, as every response has.
fn response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .header("X-Request-Id", response_header("The request id: echoed when sent, generated otherwise."))
}

fn json_response(description: &str, schema: impl Into<RefOr<utoipa::openapi::Schema>>) -> ResponseBuilder {
    response(description).content("application/json", ContentBuilder::new().schema(Some(schema)).build())
}

fn etag_header() -> Header {
    response_header("`\"v<version>\"`: the record's version, for `If-Match` and `If-None-Match`.")
}

fn problem(description: &str) -> Response {
    response(description)
        .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(schema_ref(PROBLEM_SCHEMA))).build())
        .build()
}

/// The error answers every authenticated operation shares: 401, and 403 naming the scope.
fn authenticated(operation: OperationBuilder, scope: &str) -> OperationBuilder {
    let mut unauthorized = problem("`unauthorized`: no key, or an unknown or revoked one.");
    unauthorized.headers.insert("WWW-Authenticate".into(), response_header("`Bearer`."));
    operation
        .response("401", unauthorized)
        .response(
            "403",
            problem(&format!("`forbidden`: the key lacks the `{scope}` scope (named in `missing_scope`).")),
        )
        .response(
            "503",
            retry_later("`busy` or `storage-unavailable`: nothing was written; retry after `Retry-After`."),
        )
        .response(
            "507",
            retry_later(
                "`storage-full`: the server's disk is full; nothing was written, reads still work, and writes \
                 resume by themselves once space returns.",
            ),
        )
}

/// A problem whose `Retry-After` says when to try again.
fn retry_later(description: &str) -> Response {
    let mut answer = problem(description);
    answer.headers.insert("Retry-After".into(), response_header("Seconds to wait before retrying."));
    answer
}

fn operation(id: String, tag: &str, summary: &str) -> OperationBuilder {
    OperationBuilder::new().operation_id(Some(id)).tag(tag).summary(Some(summary))
}

fn json_body(schema: &str, content_types: &[&str], description: &str) -> utoipa::openapi::request_body::RequestBody {
    let mut body = RequestBodyBuilder::new().required(Some(Required::True)).description(Some(description));
    for content_type in content_types {
        body = body.content(*content_type, ContentBuilder::new().schema(Some(schema_ref(schema))).build());
    }
    body.build()
}

fn body_errors(operation: OperationBuilder) -> OperationBuilder {
    operation
        .response("413", problem(&format!("`payload-too-large`: the body is larger than {} KiB.", BODY_LIMIT / 1024)))
}

// ---------------------------------------------------------------------------------------
// Record operations

fn scalar_fields(collection: &Collection) -> impl Iterator<Item = &Field> {
    collection.fields.values().filter(|f| f.ty.is_scalar())
}

fn list_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let deleted_note = "Needs `read_deleted`.";
    let mut parameters = vec![
        query(
            "limit",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_LIMIT))
                .default(Some(json!(DEFAULT_LIMIT))),
            &format!("Page size, 1 to {MAX_LIMIT} (more → 400)."),
        ),
        cursor_param(opaque_cursor(), "The `next_cursor` of the previous page (same `sort`)."),
        query(
            "include",
            string().enum_values(Some(["deleted", "archived", "archived,deleted", "deleted,archived"])),
            "`deleted`: soft-deleted records too (needs `read_deleted`); `archived`: archived records too.",
        ),
        query("filter[deleted]", boolean(), &format!("`true`: soft-deleted records only. {deleted_note}")),
        query("filter[archived]", boolean(), "`true`: archived records only; `false`: not archived (the default)."),
        query("filter[deleted_since]", date_time(), &format!("Deleted at or after. {deleted_note}")),
        query("filter[deleted_before]", date_time(), &format!("Deleted before. {deleted_note}")),
        query("filter[deleted_by]", string(), &format!("Deleted by this key id. {deleted_note}")),
        query(
            "filter[purge_before]",
            date_time(),
            &format!("Recovery window ends before (\"expiring soon\"). {deleted_note}"),
        ),
    ];
    let mut sorts = Vec::new();
    for key in ["id", "created_at", "updated_at", "deleted_at"] {
        sorts.push(key.to_string());
        sorts.push(format!("-{key}"));
    }
    for field in scalar_fields(collection) {
        parameters.push(query(
            &format!("filter[{}]", field.name),
            field_schema(field, false),
            &format!("Equality on `{}`.", field.name),
        ));
        sorts.push(field.name.clone());
        sorts.push(format!("-{}", field.name));
    }
    parameters.push(query(
        "sort",
        string().enum_values(Some(sorts)).default(Some(json!("id"))),
        "Order; `-` for descending. Ties break by id; the default `id` is creation order.",
    ));
    parameters.push(query("count", boolean(), "`true`: add `total`, the number of matching records."));
    let searchable = collection.fields.values().any(|f| f.search);
    if searchable {
        parameters.push(query(
            "q",
            string().min_length(Some(1)).max_length(Some(500)).pattern(Some(r"\S")),
            "Full text over the `search` fields (1 to 500 characters, not only spaces). The index proposes, the \
             database decides: filters, sort, cursors and `total` as without `q`, and never a deleted record. \
             Ordered by `sort`, not by relevance.",
        ));
    }
    parameters.push(as_of_param(
        "The list as it was at this instant (§14): the same filters, sort and cursors, applied to the records \
         as they were; not with `q` (400).",
    ));

    let op = operation(format!("list_{c}"), c, &format!("List {c}"))
        .description(Some("Active records unless asked otherwise; cursors stay stable under concurrent writes."))
        .parameters(Some(parameters))
        .response("200", json_response("A page.", schema_ref(&names.list)))
        .response("400", problem("`invalid-parameter`: an unknown, repeated or malformed parameter or cursor."));
    let op = authenticated(op, "read");
    let op = if searchable {
        op.response(
            "503",
            retry_later(
                "`busy` or `storage-unavailable`: retry after `Retry-After`; with `q`, `unavailable` while the \
                 server fills a new search index from the database (its first start, or after an upgrade that \
                 changed the index's format).",
            ),
        )
    } else {
        op
    };
    op.build()
}

fn create_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let created = json_response("Created.", schema_ref(&names.record))
        .header("Location", response_header("`/v1/{collection}/{id}`."))
        .header("ETag", etag_header())
        .header("Idempotent-Replayed", response_header("`true` when this answer replays an earlier one."));
    let op = operation(format!("create_{c}"), c, &format!("Create a record in {c}"))
        .parameter(header_param_of(
            "Idempotency-Key",
            false,
            string().min_length(Some(1)).max_length(Some(255)).pattern(Some("^[ -~]{1,255}$")),
            "1-255 characters. The same key and body within 24 h replays the first answer \
             (`Idempotent-Replayed: true`).",
        ))
        .request_body(Some(json_body(&names.new, &["application/json"], "The new record.")))
        .response("201", created)
        .response(
            "400",
            problem("`malformed`: not JSON; `invalid-parameter`: a bad `Idempotency-Key` or query parameter."),
        )
        .response(
            "409",
            problem(
                "`unique-conflict`: an active record holds a unique value, or the id is taken \
                 (`conflicting_id`); `idempotency-conflict`: the first request with this key is still running.",
            ),
        )
        .response("410", problem("`erased`: the record this idempotent request created has been erased."))
        .response(
            "422",
            problem(
                "`validation`: wrong types, unknown or missing fields, a missing or deleted parent (`errors`); \
                 `idempotency-mismatch`: the key was used with another body.",
            ),
        );
    authenticated(body_errors(op), "write").build()
}

fn get_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let op = operation(format!("get_{c}"), c, &format!("Get a record of {c}"))
        .parameter(id_param("The record id."))
        .parameter(query(
            "include",
            string().enum_values(Some(["deleted"])),
            "`deleted`: answer for a soft-deleted record too (until it is purged). Needs `read_deleted`.",
        ))
        .parameter(as_of_param(
            "The record as it was at this instant (§14): 404 if it did not exist then, or was deleted then \
             (without `include=deleted`).",
        ))
        .parameter(header_param("If-None-Match", false, "An `ETag`; when current → 304."))
        .response("200", json_response("The record.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("304", response("Not modified: `If-None-Match` matches.").header("ETag", etag_header()))
        .response(
            "400",
            problem(
                "`invalid-parameter`: an unknown parameter or `include` value; `as_of` not RFC 3339 or in the future.",
            ),
        )
        .response(
            "404",
            problem("`not-found`: no such record, or it is deleted (without `include=deleted`), purged or erased."),
        );
    authenticated(op, "read").build()
}

fn update_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let mut op = operation(format!("update_{c}"), c, &format!("Update a record of {c}"))
        .description(Some("JSON merge patch (RFC 7396); bumps `version`."))
        .parameter(id_param("The record id."))
        .parameter(if_match_param(collection, "changed"))
        .request_body(Some(json_body(
            &names.patch,
            &["application/merge-patch+json", "application/json"],
            "The changes.",
        )))
        .response("200", json_response("The updated record.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("400", problem("`malformed`: not JSON; `invalid-parameter`: a query parameter."))
        .response("404", problem("`not-found`: no such record, or it is deleted."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."))
        .response("422", problem("`validation`: wrong types, unknown fields, a required field removed, a bad parent."));
    op = op.response(
        "409",
        problem(if collection.unique.is_empty() {
            "`archived`: the record is archived and read-only; unarchive it first."
        } else {
            "`unique-conflict`: an active record holds the value (`conflicting_id`); `archived`: the record is \
             archived and read-only, unarchive it first."
        }),
    );
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(body_errors(op), "write").build()
}

fn put_file_operation(collection: &Collection, names: &CollectionNames, field: &Field, rules: &FileRules) -> Operation {
    let (c, f) = (&collection.name, &field.name);
    let types =
        if rules.content_types.is_empty() { "any media type".to_string() } else { rules.content_types.join(", ") };
    let mut body = RequestBodyBuilder::new()
        .required(Some(Required::True))
        .description(Some(format!("The file's bytes, at most {} ({types}).", rules.max_bytes)));
    let binary = || string().format(Some(SchemaFormat::Custom("binary".into())));
    if rules.content_types.is_empty() {
        body = body.content("*/*", ContentBuilder::new().schema(Some(binary())).build());
    }
    for t in &rules.content_types {
        body = body.content(t.as_str(), ContentBuilder::new().schema(Some(binary())).build());
    }
    let mut op = operation(format!("put_file_{c}_{f}"), c, &format!("Upload the {f} file of a record of {c}"))
        .description(Some(format!(
            "Streams the body into the files store (§15) and points `{f}` at it: a new version, audited, with a \
             `record.updated` event. Files are kept by content (`sha256`) per tenant; every version keeps the \
             file it had, so `:revert` and restore bring a replaced file back. The `Content-Type` header is \
             required and becomes the file's `content_type`."
        )))
        .parameter(id_param("The record id."))
        .parameter(if_match_param(collection, "changed"))
        .request_body(Some(body.build()))
        .response(
            "200",
            json_response("The record with the file's metadata.", schema_ref(&names.record))
                .header("ETag", etag_header()),
        )
        .response("400", problem("`invalid-parameter`: a query parameter; `malformed`: the body could not be read."))
        .response("404", problem("`not-found`: no such record (nothing is stored), or it is deleted."))
        .response("408", problem("`request-timeout`: the body stopped arriving; nothing was stored."))
        .response("409", problem("`archived`: the record is archived and read-only; unarchive it first."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."))
        .response(
            "413",
            problem(&format!(
                "`payload-too-large`: larger than {} bytes (`max_bytes`); nothing is stored.",
                rules.max_bytes
            )),
        )
        .response(
            "415",
            problem(&format!("`unsupported-media-type`: no `Content-Type`, or not one of {types} (`allowed`).")),
        );
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(op, "write").build()
}

fn get_file_operation(collection: &Collection, field: &Field) -> Operation {
    let (c, f) = (&collection.name, &field.name);
    let bytes = |description: &str| {
        response(description)
            .header("ETag", response_header("`\"sha256:<hex>\"`: the bytes' hash."))
            .header("Content-Length", response_header("The number of bytes sent."))
            .header("Accept-Ranges", response_header("`bytes`."))
            .content(
                "*/*",
                ContentBuilder::new()
                    .schema(Some(string().format(Some(SchemaFormat::Custom("binary".into())))))
                    .build(),
            )
    };
    let op = operation(format!("get_file_{c}_{f}"), c, &format!("Download the {f} file of a record of {c}"))
        .description(Some(
            "Streams the bytes back with the `Content-Type` they were uploaded with. `Range` (one `bytes=` range) \
             answers 206 with `Content-Range`; `If-Range` and `If-None-Match` take the `ETag`. A deleted record's file \
             needs `include=deleted` and `read_deleted`.",
        ))
        .parameter(id_param("The record id."))
        .parameter(query(
            "include",
            string().enum_values(Some(["deleted"])),
            "`deleted`: also a deleted record's file (needs `read_deleted`).",
        ))
        .parameter(header_param("Range", false, "One range, `bytes=start-end`, `bytes=start-` or `bytes=-suffix`."))
        .response("200", bytes("The file."))
        .response("206", bytes("The requested range (`Content-Range`)."))
        .response("304", response("`If-None-Match` matched."))
        .response("400", problem("`invalid-parameter`: a query parameter."))
        .response("404", problem("`not-found`: no such record, it is deleted, or it has no file here."))
        .response(
            "416",
            problem("`range-not-satisfiable`: the range is outside the file (`Content-Range: bytes */size`)."),
        );
    authenticated(op, "read").build()
}

fn delete_file_operation(collection: &Collection, names: &CollectionNames, field: &Field) -> Operation {
    let (c, f) = (&collection.name, &field.name);
    let mut op = operation(format!("delete_file_{c}_{f}"), c, &format!("Remove the {f} file of a record of {c}"))
        .description(Some(
            "Sets the field to null in a new version. The bytes stay while earlier versions point at them \
             (`:revert` brings them back) and go with the record's purge or erasure.",
        ))
        .parameter(id_param("The record id."))
        .parameter(if_match_param(collection, "changed"))
        .response(
            "200",
            json_response("The record without the file.", schema_ref(&names.record)).header("ETag", etag_header()),
        )
        .response("404", problem("`not-found`: no such record, it is deleted, or it has no file here."))
        .response("409", problem("`archived`: the record is archived and read-only; unarchive it first."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."));
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(op, "write").build()
}

/// Collections whose refs to `collection` refuse its deletion.
fn restricting_children<'a>(schema: &'a Schema, collection: &'a Collection) -> impl Iterator<Item = &'a str> + 'a {
    schema.collections.values().filter_map(move |child| {
        child
            .fields
            .values()
            .any(|f| {
                matches!(&f.ty, FieldType::Ref { collection: target, on_delete: OnDelete::Restrict }
                    if *target == collection.name)
            })
            .then_some(child.name.as_str())
    })
}

/// The collection and every collection a DELETE of it cascades into, at once (`cascade`
/// refs, followed to any depth).
fn cascade_set<'a>(schema: &'a Schema, collection: &'a Collection) -> Vec<&'a Collection> {
    let mut set = vec![collection];
    let mut next = 0;
    while let Some(parent) = set.get(next).map(|c| c.name.clone()) {
        next += 1;
        for child in schema.collections.values() {
            let cascades = child.fields.values().any(|f| {
                matches!(&f.ty, FieldType::Ref { collection: target, on_delete: OnDelete::Cascade }
                    if *target == parent)
            });
            if cascades && !set.iter().any(|c| c.name == child.name) {
                set.push(child);
            }
        }
    }
    set
}

fn delete_operation(schema: &Schema, collection: &Collection) -> Operation {
    let c = &collection.name;
    let deleted = response(match collection.delete {
        DeleteMode::Soft => "Soft-deleted (or already deleted: nothing changes). Restorable until `purge_at`.",
        DeleteMode::Hard => "Deleted for good: this is a hard-delete collection.",
    })
    .header("Deletion-Id", response_header("The deletion operation (`del_…`)."));
    let mut op = operation(format!("delete_{c}"), c, &format!("Delete a record of {c}"))
        .parameter(id_param("The record id."))
        .parameter(reason_param("deletion"))
        .parameter(query(
            "dry_run",
            boolean(),
            "`true`: answer the deletion plan (200) and change nothing — the blast radius before the click.",
        ))
        .parameter(if_match_param(collection, "deleted"))
        .response("200", json_response("`dry_run=true`: the plan.", schema_ref("DeletionPlan")))
        .response("204", deleted)
        .response("400", problem("`invalid-parameter`: an unknown parameter or a `dry_run` other than true/false."))
        .response("404", problem("`not-found`: no such record (purged, erased, or never there)."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale on an active record (`current_etag`)."))
        .response("422", problem("`validation`: `reason` longer than 500 characters."));
    // A restrict anywhere in the cascade stops the whole delete, not only one on the root.
    let cascade = cascade_set(schema, collection);
    let mut children: Vec<&str> = Vec::new();
    for name in cascade.iter().flat_map(|c| restricting_children(schema, c)) {
        if !children.contains(&name) {
            children.push(name);
        }
    }
    let mut conflicts = Vec::new();
    if !children.is_empty() {
        conflicts.push(format!(
            "`restrict`: active records of {} point here or at a record the cascade takes (`blockers`, \
             `blockers_total`)",
            children.join(", ")
        ));
    }
    // Held records are never purged: deleting one in a hard-delete collection, or a
    // cascade that would purge one, stops with `legal-hold`.
    if cascade.iter().any(|c| c.delete == DeleteMode::Hard) {
        conflicts.push("`legal-hold`: the record, or a record the cascade would purge, is held".to_string());
    }
    if !conflicts.is_empty() {
        op = op.response("409", problem(&format!("{}.", conflicts.join("; "))));
    }
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(op, "delete").build()
}

fn restore_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let mut conflicts = Vec::new();
    if !collection.unique.is_empty() {
        conflicts.push("`unique-conflict`: an active record now holds a unique value (`conflicting_id`)");
    }
    if collection
        .fields
        .values()
        .any(|f| matches!(&f.ty, FieldType::Ref { on_delete, .. } if *on_delete != OnDelete::Orphan))
    {
        conflicts.push("`parent-deleted`: a parent is deleted; restore it first (`blockers`)");
    }
    let mut op = operation(format!("restore_{c}"), c, &format!("Restore a deleted record of {c}"))
        .description(Some(match collection.delete {
            DeleteMode::Soft => "Within the recovery window; restoring an active record changes nothing.",
            DeleteMode::Hard => "A hard-delete collection keeps no deleted records: there is nothing to restore.",
        }))
        .parameter(id_param("The record id."))
        .parameter(reason_param("restore"))
        .parameter(if_match_param(collection, "restored"))
        .response("200", json_response("The record, active.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("400", problem("`invalid-parameter`: an unknown query parameter."))
        .response("404", problem("`not-found`: never existed, purged, erased, or the recovery window has elapsed."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."))
        .response("422", problem("`validation`: `reason` longer than 500 characters."));
    if !conflicts.is_empty() {
        op = op.response("409", problem(&format!("{}.", conflicts.join("; "))));
    }
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(op, "restore").build()
}

fn purge_operation(collection: &Collection) -> Operation {
    let c = &collection.name;
    let op = operation(format!("purge_{c}"), c, &format!("Purge a deleted record of {c} now"))
        .description(Some("Hard-deletes a soft-deleted record before its window ends; not blocked by a purge pause."))
        .parameter(id_param("The record id."))
        .parameter(reason_param("purge"))
        .response("204", response("Purged: audited as `purge`, event `record.purged`."))
        .response("400", problem("`invalid-parameter`: an unknown query parameter."))
        .response("404", problem("`not-found`: no such record (already purged, erased, or never there)."))
        .response(
            "409",
            problem("`not-deleted`: the record is active, delete it first; `legal-hold`: the record is held."),
        )
        .response("422", problem("`validation`: `reason` longer than 500 characters."));
    authenticated(op, "purge").build()
}

fn erase_operation(collection: &Collection) -> Operation {
    let c = &collection.name;
    let op = operation(format!("erase_{c}"), c, &format!("Erase a record of {c} (GDPR)"))
        .description(Some(
            "Removes the record and every stored copy of its values at once, deleted or not; the audit keeps \
             who, when, why and the id. Cascade and eventual children (active or deleted) are erased with it; \
             active restrict children block it (409); orphan children stay. Afterwards every endpoint answers \
             404 for it, except `:erase` itself, which answers the stored receipt again with what is still \
             pending.",
        ))
        .parameter(id_param("The record id."))
        .parameter(reason_param("erasure"))
        .response("200", json_response("The erasure receipt.", schema_ref("ErasureReceipt")))
        .response("400", problem("`invalid-parameter`: an unknown query parameter."))
        .response("404", problem("`not-found`: no such record (purged, erased, or never there)."))
        .response(
            "409",
            problem("`legal-hold`: the record (or one erased with it) is held; `restrict`: active children block it."),
        )
        .response("422", problem("`validation`: `reason` longer than 500 characters."));
    authenticated(op, "erase").build()
}

fn hold_operation(collection: &Collection) -> Operation {
    let c = &collection.name;
    let body = RequestBodyBuilder::new()
        .required(Some(Required::False))
        .description(Some("Optional: the case and the reason."))
        .content("application/json", ContentBuilder::new().schema(Some(schema_ref("HoldRequest"))).build())
        .build();
    let op = operation(format!("hold_{c}"), c, &format!("Place a legal hold on a record of {c}"))
        .description(Some("Holds stack; a held record can be deleted and restored but is never purged or erased."))
        .parameter(id_param("The record id."))
        .request_body(Some(body))
        .response("201", json_response("The hold.", schema_ref("Hold")))
        .response("400", problem("`malformed`: not JSON; `invalid-parameter`: a query parameter."))
        .response("404", problem("`not-found`: no such record (purged, erased, or never there)."))
        .response("422", problem("`validation`: unknown members, or `case`/`reason` not a string of at most 500."));
    authenticated(body_errors(op), "hold").build()
}

/// `:archive` (`archive`) or `:unarchive` (§17).
fn archive_operation(collection: &Collection, names: &CollectionNames, archive: bool) -> Operation {
    let c = &collection.name;
    let (verb, action) = if archive { ("archive", "Archive") } else { ("unarchive", "Unarchive") };
    let mut op = operation(format!("{verb}_{c}"), c, &format!("{action} a record of {c}"))
        .description(Some(if archive {
            "Out of lists, counts and search unless asked (`include=archived`), read-only, never purged by age; \
             still readable by id. Audited as `archive`, event `record.archived`. Archiving an archived record \
             answers 200 and changes nothing."
        } else {
            "Back in lists and writable. Audited as `unarchive`, event `record.unarchived`. Unarchiving a record \
             that is not archived answers 200 and changes nothing."
        }))
        .parameter(id_param("The record id."))
        .parameter(if_match_param(collection, if archive { "archived" } else { "unarchived" }));
    if archive {
        let body = RequestBodyBuilder::new()
            .required(Some(Required::False))
            .description(Some("Optional: the reason."))
            .content("application/json", ContentBuilder::new().schema(Some(schema_ref("ArchiveRequest"))).build())
            .build();
        op = op
            .request_body(Some(body))
            .response("422", problem("`validation`: unknown members, or `reason` not a string of at most 500."));
    }
    op = op
        .response("200", json_response("The record.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("400", problem("`malformed`: not JSON; `invalid-parameter`: a query parameter."))
        .response("404", problem("`not-found`: no such record, or it is deleted."))
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."));
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(body_errors(op), "write").build()
}

/// `as_of` (§14).
fn as_of_param(description: &str) -> Parameter {
    query("as_of", date_time(), &format!("{description} RFC 3339, not in the future (400 otherwise)."))
}

/// The version number in a path or a query.
fn version_number() -> ObjectBuilder {
    integer().minimum(Some(1))
}

/// One version of a record of this collection (§14).
fn version_schema(names: &CollectionNames) -> ObjectBuilder {
    let actions = ["create", "update", "delete", "cascade_delete", "restore", "revert", "hold", "release", "archive"]
        .into_iter()
        .chain(["unarchive", tombstone_domain::history::BASELINE_ACTION]);
    closed(require_all(
        ObjectBuilder::new()
            .property("version", version_number())
            .property("valid_from", date_time().description(Some("When the change that wrote it happened.")))
            .property(
                "valid_to",
                nullable_time().description(Some("When the next version replaced it; null for the current one.")),
            )
            .property(
                "action",
                string().enum_values(Some(actions)).description(Some(
                    "The change (`baseline`: the state of a record that existed before history did).",
                )),
            )
            .property(
                "actor",
                nullable_string().description(Some("The key id (`system` for `archive_after`); null for `baseline`.")),
            )
            .property("deletion_id", nullable_string().description(Some("The operation of a delete or restore.")))
            .property("record", schema_ref(&names.record)),
        &["version", "valid_from", "valid_to", "action", "actor", "deletion_id", "record"],
    ))
}

/// The history endpoints' answers for a record that is not there, or not readable.
fn history_errors(op: OperationBuilder) -> OperationBuilder {
    op.response(
        "404",
        problem("`not-found`: no such record (another tenant's, purged or erased: their history goes with them)."),
    )
}

fn versions_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let page = closed(
        ObjectBuilder::new()
            .property("items", array_of(version_schema(names)))
            .property(
                "next_cursor",
                string().schema_type(nullable(Type::String)).description(Some("Pass as `cursor` for the next page.")),
            )
            .required("items")
            .required("next_cursor"),
    );
    let op = operation(format!("versions_{c}"), c, &format!("List the versions of a record of {c}"))
        .description(Some(
            "Every change keeps a version (§14), newest first. A deleted record's history also needs \
             `read_deleted` (403 otherwise).",
        ))
        .parameter(id_param("The record id."))
        .parameter(limit_param())
        .parameter(cursor_param(opaque_cursor(), "The `next_cursor` of the previous page."))
        .response("200", json_response("A page of versions, newest first.", page))
        .response("400", problem("`invalid-parameter`: an unknown parameter, a bad `limit` or `cursor`."));
    authenticated(history_errors(op), "read").build()
}

fn version_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let op = operation(format!("version_{c}"), c, &format!("Get one version of a record of {c}"))
        .description(Some("A deleted record's history also needs `read_deleted` (403 otherwise)."))
        .parameter(id_param("The record id."))
        .parameter(
            ParameterBuilder::new()
                .name("version")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(version_number()))
                .description(Some("The version number.")),
        )
        .response("200", json_response("The version.", version_schema(names)).header("ETag", etag_header()))
        .response("400", problem("`invalid-parameter`: `version` is not a positive integer."))
        .response(
            "404",
            problem("`not-found`: no such record or no such version (another tenant's, purged or erased)."),
        );
    authenticated(op, "read").build()
}

fn revert_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let mut op = operation(format!("revert_{c}"), c, &format!("Revert a record of {c} to an earlier version"))
        .description(Some(
            "Writes a new version (numbers only grow) whose declared fields equal version `version`'s. \
             Audited as `revert`, event `record.updated`.",
        ))
        .parameter(id_param("The record id."))
        .parameter(
            ParameterBuilder::new()
                .name("version")
                .parameter_in(ParameterIn::Query)
                .required(Required::True)
                .schema(Some(version_number()))
                .description(Some("The version whose fields to take back.")),
        )
        .parameter(if_match_param(collection, "reverted"))
        .response("200", json_response("The record.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("400", problem("`invalid-parameter`: `version` missing or not a positive integer."))
        .response("404", problem("`not-found`: no such record, or it is deleted."))
        .response(
            "409",
            problem(
                "`unique-conflict`: an active record holds one of the values now (`conflicting_id`); \
                 `archived`: the record is archived and read-only.",
            ),
        )
        .response("412", problem("`precondition-failed`: `If-Match` is stale (`current_etag`)."))
        .response(
            "422",
            problem("`validation`: the record has no such version, or a ref of it points to no active record now."),
        );
    if collection.require_if_match {
        op = op.response("428", problem("`precondition-required`: this collection requires `If-Match`."));
    }
    authenticated(op, "write").build()
}

fn release_operation(collection: &Collection, names: &CollectionNames) -> Operation {
    let c = &collection.name;
    let op = operation(format!("release_{c}"), c, &format!("Release a legal hold on a record of {c}"))
        .parameter(id_param("The record id."))
        .parameter(
            ParameterBuilder::new()
                .name("hold_id")
                .parameter_in(ParameterIn::Query)
                .required(Required::True)
                .schema(Some(string()))
                .description(Some("The hold to release (`hold_id` from `:hold`).")),
        )
        .parameter(reason_param("release"))
        .response("200", json_response("The record.", schema_ref(&names.record)).header("ETag", etag_header()))
        .response("400", problem("`invalid-parameter`: `hold_id` missing, or an unknown parameter."))
        .response("404", problem("`not-found`: no such record, or no such active hold on it."))
        .response("422", problem("`validation`: `reason` longer than 500 characters."));
    authenticated(op, "hold").build()
}

// ---------------------------------------------------------------------------------------
// Trash and purge

fn retention_components(components: ComponentsBuilder, schema: &Schema, names: &SchemaNames) -> ComponentsBuilder {
    // A trash item is a record of any collection; `collection` says which.
    let mut item = utoipa::openapi::schema::OneOfBuilder::new();
    let mut mapping = Vec::new();
    for name in schema.collections.keys() {
        let record = &names.0[name].record;
        item = item.item(schema_ref(record));
        mapping.push((name.clone(), format!("#/components/schemas/{record}")));
    }
    let mut discriminator = utoipa::openapi::schema::Discriminator::new("collection");
    discriminator.mapping = mapping.into_iter().collect();
    let item = item.discriminator(Some(discriminator));
    let scrubbed = require_all(
        ObjectBuilder::new()
            .property("versions", integer().minimum(Some(0)))
            .property("events", integer().minimum(Some(0)))
            .property("idempotent_responses", integer().minimum(Some(0)))
            .property("search", boolean())
            .property("cache", boolean()),
        &["versions", "events", "idempotent_responses", "search", "cache"],
    );
    let due = require_all(
        ObjectBuilder::new()
            .property("count", integer().minimum(Some(0)).description(Some("Due now.")))
            .property("sample", array_of(record_id()).max_items(Some(100)).description(Some("Up to 100 ids due now.")))
            .property("due_next_7_days", integer().minimum(Some(0)))
            .property("held", integer().minimum(Some(0)).description(Some("Past their window but held."))),
        &["count", "sample", "due_next_7_days"],
    );
    components
        .schema(
            "ArchiveRequest",
            closed(ObjectBuilder::new())
                .property("reason", string().schema_type(nullable(Type::String)).max_length(Some(500))),
        )
        .schema(
            "HoldRequest",
            closed(ObjectBuilder::new())
                .property("case", string().schema_type(nullable(Type::String)).max_length(Some(500)))
                .property("reason", string().schema_type(nullable(Type::String)).max_length(Some(500))),
        )
        .schema(
            "ErasureReceipt",
            require_all(
                ObjectBuilder::new()
                    .property("collection", string())
                    .property("id", record_id())
                    .property("erased_at", date_time())
                    .property("audit_seq", integer().minimum(Some(1)))
                    .property("scrubbed", scrubbed)
                    .property(
                        "counts",
                        ObjectBuilder::new()
                            .description(Some(
                                "Records erased, per collection, the root included (cascade and eventual \
                                 relations take their children along).",
                            ))
                            .additional_properties(Some(integer())),
                    )
                    .property(
                        "files",
                        integer().minimum(Some(0)).description(Some(
                            "Stored files the erased records referenced (§15); each is removed with its \
                             last reference by the files worker, within a second of the commit.",
                        )),
                    )
                    .property(
                        "pending",
                        array_of(string().enum_values(Some(["search", "wal", "vacuum"]))).description(Some(
                            "Steps that run after the commit and are not done yet: `search` (the index \
                             still holds its terms), `wal` (SQLite: the write-ahead log still holds old \
                             pages), `vacuum` (PostgreSQL: dead row versions still hold the values until \
                             a vacuum prunes them). Empty once no copy is left; a retried `:erase` shows \
                             the state now.",
                        )),
                    ),
                &["collection", "id", "erased_at", "audit_seq", "scrubbed", "counts", "files", "pending"],
            ),
        )
        .schema(
            "TrashList",
            require_all(
                ObjectBuilder::new()
                    .description(Some("Deleted records still inside their window, newest first."))
                    .property("items", ArrayBuilder::new().items(item))
                    .property("next_cursor", nullable_string()),
                &["items", "next_cursor"],
            ),
        )
        .schema(
            "PurgePreview",
            require_all(
                ObjectBuilder::new()
                    .property("as_of", date_time())
                    .property("paused", boolean())
                    .property("total", integer().minimum(Some(0)).description(Some("Due now, all collections.")))
                    .property("collections", ObjectBuilder::new().additional_properties(Some(due))),
                &["as_of", "paused", "total", "collections"],
            ),
        )
        .schema("PurgeState", require_all(ObjectBuilder::new().property("paused", boolean()), &["paused"]))
}

fn retention_paths(paths: PathsBuilder, schema: &Schema) -> PathsBuilder {
    let collection_names = || string().enum_values(Some(schema.collections.keys().map(String::as_str)));
    let trash = operation("trash_list".into(), "retention", "List the trash")
        .description(Some(
            "Deleted records still inside their recovery window, newest first, of every collection the key \
             may read deleted records of.",
        ))
        .parameters(Some([
            query("collection", collection_names(), "Only this collection."),
            query("deleted_since", date_time(), "Deleted at or after."),
            query("deleted_before", date_time(), "Deleted before."),
            query("deleted_by", string(), "Deleted by this key id."),
            query("purge_before", date_time(), "Recovery window ends before (\"expiring soon\")."),
            limit_param(),
            cursor_param(opaque_cursor(), "The `next_cursor` of the previous page."),
        ]))
        .response("200", json_response("A page of deleted records.", schema_ref("TrashList")))
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter or cursor."));
    let preview = operation("purge_preview".into(), "retention", "Preview the purge")
        .parameter(query("collection", collection_names(), "Only this collection."))
        .response(
            "200",
            json_response("Per collection: due now, a sample, due within 7 days.", schema_ref("PurgePreview")),
        )
        .response("400", problem("`invalid-parameter`: an unknown parameter or collection."));
    let state = |id: &str, summary: &str| {
        authenticated(
            operation(id.into(), "retention", summary)
                .response("200", json_response("The purge state.", schema_ref("PurgeState"))),
            "admin",
        )
        .build()
    };
    paths
        .path("/v1/trash", PathItem::new(HttpMethod::Get, authenticated(trash, "read_deleted").build()))
        .path("/v1/purge/preview", PathItem::new(HttpMethod::Get, authenticated(preview, "purge").build()))
        .path(
            "/v1/purge:pause",
            PathItem::new(HttpMethod::Post, state("purge_pause", "Pause purging (every replica, across restarts)")),
        )
        .path("/v1/purge:resume", PathItem::new(HttpMethod::Post, state("purge_resume", "Resume purging")))
}

// ---------------------------------------------------------------------------------------
// Audit, events and webhooks

fn page_schema(item: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .property("items", array_of(schema_ref(item)))
        .property(
            "next_cursor",
            string().schema_type(nullable(Type::String)).description(Some("Pass as `cursor` for the next page.")),
        )
        .required("items")
        .required("next_cursor")
}

fn nullable_string() -> ObjectBuilder {
    string().schema_type(nullable(Type::String))
}

fn nullable_time() -> ObjectBuilder {
    date_time().schema_type(nullable(Type::String))
}

fn nullable_integer() -> ObjectBuilder {
    integer().schema_type(nullable(Type::Integer))
}

fn require_all(mut object: ObjectBuilder, names: &[&str]) -> ObjectBuilder {
    for name in names {
        object = object.required(*name);
    }
    object
}

fn event_type_names() -> Vec<&'static str> {
    EventType::ALL.iter().map(|t| t.as_str()).collect()
}

/// A comma-separated list of event types, as the server reads it (spaces and empty items
/// ignored).
fn event_types_pattern() -> String {
    let one = format!("({})", event_type_names().iter().map(|t| t.replace('.', "\\.")).collect::<Vec<_>>().join("|"));
    format!("^ *{one}? *(, *{one}? *)*$")
}

fn feed_components(components: ComponentsBuilder) -> ComponentsBuilder {
    let audit = ObjectBuilder::new()
        .property("seq", integer().minimum(Some(1)))
        .property("at", date_time())
        .property("tenant", string())
        .property("actor", string().description(Some("The key id that acted.")))
        .property("action", string().enum_values(Some(AuditAction::ALL.iter().map(|a| a.as_str()))))
        .property("collection", nullable_string())
        .property("record_id", nullable_string())
        .property("version", nullable_integer())
        .property("deletion_id", nullable_string())
        .property("reason", nullable_string())
        .property("request_id", nullable_string())
        .property(
            "hold_id",
            string().description(Some("On `hold` and `release` entries only: the hold (`reason` is as given).")),
        )
        .property("case", string().description(Some("On `hold` and `release` entries of a hold that named a case.")))
        .property("prev_hash", string())
        .property("hash", string().description(Some("SHA-256 over `prev_hash` and the entry's canonical form (hex).")));
    let audit = require_all(
        audit,
        &[
            "seq",
            "at",
            "tenant",
            "actor",
            "action",
            "collection",
            "record_id",
            "version",
            "deletion_id",
            "reason",
            "request_id",
            "prev_hash",
            "hash",
        ],
    );
    let event = ObjectBuilder::new()
        .description(Some("The envelope, exactly as delivered to webhooks, NATS and the stream."))
        .property("id", string().description(Some("`evt_…`, stable: dedupe on it.")))
        .property("seq", integer().minimum(Some(1)))
        .property("type", string().enum_values(Some(event_type_names())))
        .property("tenant", string())
        .property("collection", string())
        .property("record_id", string())
        .property("version", nullable_integer())
        .property("deletion_id", nullable_string())
        .property("occurred_at", date_time())
        .property("request_id", nullable_string())
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(nullable(Type::Object))
                .description(Some("The record without its `pii` fields; null for purged and erased records.")),
        );
    let event = require_all(
        event,
        &[
            "id",
            "seq",
            "type",
            "tenant",
            "collection",
            "record_id",
            "version",
            "deletion_id",
            "occurred_at",
            "request_id",
            "data",
        ],
    );
    let delivery = ObjectBuilder::new()
        .property("id", string())
        .property("endpoint_id", string())
        .property("event_id", string())
        .property("event_seq", integer())
        .property("event_type", string().enum_values(Some(event_type_names())))
        .property("status", string().enum_values(Some(DELIVERY_STATUSES.iter().copied())))
        .property("attempts", integer().minimum(Some(0)))
        .property("next_attempt_at", nullable_time().description(Some("Set while `pending`.")))
        .property("last_status", nullable_integer().description(Some("The endpoint's last HTTP status.")))
        .property(
            "last_error",
            nullable_string().description(Some(
                "A class, never transport text: `timeout`, `connect`, `tls`, `http <status>`, `body`, `redirect`, \
                 `request`, `event-gone`, `endpoint-removed`, `endpoint-disabled`.",
            )),
        )
        .property("last_attempt_at", nullable_time())
        .property("delivered_at", nullable_time())
        .property("created_at", date_time());
    let delivery = require_all(
        delivery,
        &[
            "id",
            "endpoint_id",
            "event_id",
            "event_seq",
            "event_type",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status",
            "last_error",
            "last_attempt_at",
            "delivered_at",
            "created_at",
        ],
    );
    let endpoint = ObjectBuilder::new()
        .property("id", string().description(Some("`wh_…`, derived from the URL.")))
        .property(
            "url",
            string().description(Some(
                "Scheme and host only (`https://hooks.example.com/…`): a path or query may carry a token.",
            )),
        )
        .property("cursor", integer().description(Some("The seq delivered up to.")))
        .property("disabled", boolean())
        .property("disabled_at", nullable_time())
        .property("disabled_reason", nullable_string())
        .property("removed", boolean().description(Some("It left the config: skipped until it comes back.")))
        .property("removed_at", nullable_time());
    let endpoint = require_all(
        endpoint,
        &["id", "url", "cursor", "disabled", "disabled_at", "disabled_reason", "removed", "removed_at"],
    );
    let verify = ObjectBuilder::new()
        .property("status", string().enum_values(Some(["intact", "broken", "pending"])))
        .property("checked_at", nullable_time().description(Some("When the last check finished; null: none yet.")))
        .property(
            "broken_entry",
            ObjectBuilder::new()
                .schema_type(nullable(Type::Object))
                .property("seq", integer())
                .property("problem", string())
                .description(Some("The first entry that fails, only when it is the caller's tenant's.")),
        )
        .property(
            "broken_in_this_tenant",
            boolean()
                .schema_type(nullable(Type::Boolean))
                .description(Some("Whether the first broken entry is the caller's tenant's (null unless broken).")),
        )
        .property("running", boolean().description(Some("On POST: another replica is checking now.")))
        .property("reused", boolean().description(Some("On POST: a check that had just finished was answered.")));
    let verify = require_all(verify, &["status", "checked_at", "broken_entry", "broken_in_this_tenant"]);
    components
        .schema("AuditVerify", verify)
        .schema("AuditEntry", audit)
        .schema("AuditList", page_schema("AuditEntry"))
        .schema("Event", event)
        .schema("EventList", page_schema("Event"))
        .schema("Delivery", delivery)
        .schema("DeliveryList", page_schema("Delivery"))
        .schema("WebhookEndpoint", endpoint)
        .schema("WebhookEndpointList", page_schema("WebhookEndpoint"))
        .schema(
            "WebhookEndpointEnabled",
            require_all(
                ObjectBuilder::new().property("id", string()).property("disabled", boolean()),
                &["id", "disabled"],
            ),
        )
}

/// Delivery states, as `GET /v1/webhooks/deliveries?status=` accepts them.
const DELIVERY_STATUSES: &[&str] = &["pending", "delivered", "failed", "cancelled"];

fn limit_param() -> Parameter {
    query(
        "limit",
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT))
            .default(Some(json!(DEFAULT_LIMIT))),
        &format!("Page size, 1 to {MAX_LIMIT} (more → 400)."),
    )
}

/// A list's `cursor`: `schema` says what the server can read as one; an empty value is the
/// first page, as if it were absent (what a generated client sends before it has a cursor).
fn cursor_param(schema: ObjectBuilder, description: &str) -> Parameter {
    query("cursor", schema, &format!("{description} Empty: the first page, as if absent."))
}

/// A cursor the server encodes (base64url, unpadded): what it is not issued by the server
/// is still a 400, which no schema can say.
fn opaque_cursor() -> ObjectBuilder {
    string().pattern(Some("^[A-Za-z0-9_-]*$"))
}

fn seq_param(name: &str, description: &str) -> Parameter {
    query(name, integer().minimum(Some(0)), description)
}

fn audit_paths(paths: PathsBuilder) -> PathsBuilder {
    let list = operation("audit_list".into(), "audit", "List audit entries")
        .description(Some("The tenant's entries, oldest first."))
        .parameters(Some([
            query("collection", string(), "Only this collection."),
            query("record_id", string(), "Only this record."),
            query(
                "action",
                string().enum_values(Some(AuditAction::ALL.iter().map(|a| a.as_str()))),
                "Only this action.",
            ),
            query("actor", string(), "Only this key id."),
            query("since", date_time(), "At or after."),
            // The audit cursor is the seq of the last entry: any integer is a position.
            cursor_param(string().pattern(Some("^(-?[0-9]{1,18})?$")), "The `next_cursor` of the previous page."),
            limit_param(),
        ]))
        .response("200", json_response("A page of entries.", schema_ref("AuditList")))
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter or cursor."));
    let get = operation("audit_get".into(), "audit", "Get an audit entry")
        .parameter(
            ParameterBuilder::new()
                .name("seq")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(integer().minimum(Some(1))))
                .description(Some("The entry's seq.")),
        )
        .response("200", json_response("The entry.", schema_ref("AuditEntry")))
        .response("404", problem("`not-found`: no such entry in this tenant."));
    let status = operation("audit_verify_status".into(), "audit", "The audit chain's verify status")
        .description(Some(
            "The last check of the whole hash chain, stored in the database (every replica answers the same). \
             The server checks at start and hourly. The chain is one for the deployment: a tenant sees its status \
             and time, and the broken entry only when it is its own.",
        ))
        .response("200", json_response("The last check (`pending`: none yet).", schema_ref("AuditVerify")));
    let now = operation("audit_verify_now".into(), "audit", "Check the audit chain now")
        .description(Some(
            "Recomputes the whole chain and stores the outcome. Coalesced: a check that finished within the last \
             10 seconds (or one this replica is running) is answered instead of a new one (`reused`).",
        ))
        .response("200", json_response("The check's outcome.", schema_ref("AuditVerify")))
        .response(
            "202",
            json_response(
                "Another replica is checking now (`running`): the last outcome meanwhile.",
                schema_ref("AuditVerify"),
            ),
        );
    paths
        .path("/v1/audit", PathItem::new(HttpMethod::Get, authenticated(list, "audit").build()))
        .path("/v1/audit/verify", PathItem::new(HttpMethod::Get, authenticated(status, "admin").build()))
        .path("/v1/audit/verify", PathItem::new(HttpMethod::Post, authenticated(now, "admin").build()))
        .path("/v1/audit/{seq}", PathItem::new(HttpMethod::Get, authenticated(get, "audit").build()))
}

fn event_filters(schema: &Schema) -> [Parameter; 2] {
    [
        query(
            "collection",
            string().enum_values(Some(schema.collections.keys().map(String::as_str))),
            "Only this collection's events.",
        ),
        query(
            "type",
            string().pattern(Some(event_types_pattern())),
            &format!("Comma-separated event types: {}.", event_type_names().join(", ")),
        ),
    ]
}

fn event_paths(paths: PathsBuilder, schema: &Schema) -> PathsBuilder {
    let [collection, kind] = event_filters(schema);
    let list = operation("events_list".into(), "events", "List events")
        .description(Some("In commit order; at least once, each with a stable `id`."))
        .parameters(Some([
            seq_param("after", "Events after this seq (default 0: from the start)."),
            seq_param("cursor", "The `next_cursor` of the previous page; given with `after`, `cursor` wins."),
            limit_param(),
            collection,
            kind,
        ]))
        .response("200", json_response("A page of events.", schema_ref("EventList")))
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter."));
    let [collection, kind] = event_filters(schema);
    let stream = operation("events_stream".into(), "events", "Follow events live (SSE)")
        .description(Some(
            "Server-sent events: `id:` is the seq, `event:` the type, `data:` the envelope. Resumes after              `Last-Event-ID` or `after`; without either it starts with new events only.",
        ))
        .parameters(Some([seq_param("after", "Resume after this seq."), collection, kind]))
        .parameter(header_param_of(
            "Last-Event-ID",
            false,
            string().pattern(Some("^[0-9]{1,18}$")),
            "The last seq seen; wins over `after`.",
        ))
        .response(
            "200",
            response("An endless `text/event-stream`; each `data:` is an `Event`.").content(
                "text/event-stream",
                ContentBuilder::new()
                    // One server-sent event: its fields, the `data` an `Event` as JSON.
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Object)
                            .property("id", string().description(Some("The event's `seq`.")))
                            .property("event", string().description(Some("The event's `type`.")))
                            .property("data", string().description(Some("The `Event`, as JSON.")))
                            .required("data"),
                    ))
                    .extensions(Some(
                        utoipa::openapi::extensions::ExtensionsBuilder::new()
                            .add("x-event-schema", json!({"$ref": "#/components/schemas/Event"}))
                            .build(),
                    ))
                    .build(),
            ),
        )
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter or `Last-Event-ID`."));
    paths
        .path("/v1/events", PathItem::new(HttpMethod::Get, authenticated(list, "events").build()))
        .path("/v1/events/stream", PathItem::new(HttpMethod::Get, authenticated(stream, "events").build()))
}

fn webhook_paths(paths: PathsBuilder) -> PathsBuilder {
    let deliveries = operation("webhooks_deliveries".into(), "events", "List webhook deliveries")
        .parameters(Some([
            query("status", string().enum_values(Some(DELIVERY_STATUSES.iter().copied())), "Only this status."),
            query("endpoint", string(), "Only this endpoint id (`wh_…`)."),
            cursor_param(string(), "The `next_cursor` of the previous page."),
            limit_param(),
        ]))
        .response("200", json_response("A page of deliveries, with their attempts.", schema_ref("DeliveryList")))
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter."));
    let redeliver = operation("webhooks_redeliver".into(), "events", "Send a delivery again")
        .parameter(id_param("The delivery id."))
        .response("200", json_response("The delivery, pending again.", schema_ref("Delivery")))
        .response("404", problem("`not-found`: no such delivery in this tenant."))
        .response(
            "409",
            problem(
                "`event-gone`: the delivery's event was cleaned out of the outbox, so there is nothing to send; \
                 `endpoint-removed`: its endpoint left the config.",
            ),
        );
    let endpoints = operation("webhooks_endpoints".into(), "events", "List webhook endpoints")
        .description(Some(
            "Every endpoint ever configured and its state; an endpoint answering 410 is disabled, one that left the \
             config is removed. URLs are shown as scheme and host only (a path or query may carry a token).",
        ))
        .response("200", json_response("Every endpoint (one page).", schema_ref("WebhookEndpointList")));
    let enable = operation("webhooks_enable".into(), "events", "Enable a disabled webhook endpoint")
        .parameter(id_param("The endpoint id (`wh_…`)."))
        .response("200", json_response("Enabled.", schema_ref("WebhookEndpointEnabled")))
        .response("404", problem("`not-found`: no such endpoint."));
    paths
        .path("/v1/webhooks/deliveries", PathItem::new(HttpMethod::Get, authenticated(deliveries, "events").build()))
        .path(
            "/v1/webhooks/deliveries/{id}:redeliver",
            PathItem::new(HttpMethod::Post, authenticated(redeliver, "events").build()),
        )
        .path("/v1/webhooks/endpoints", PathItem::new(HttpMethod::Get, authenticated(endpoints, "admin").build()))
        .path(
            "/v1/webhooks/endpoints/{id}:enable",
            PathItem::new(HttpMethod::Post, authenticated(enable, "admin").build()),
        )
}

fn deletion_paths(paths: PathsBuilder) -> PathsBuilder {
    let get = operation("deletions_get".into(), "deletions", "Read a deletion operation")
        .parameter(id_param("The deletion id (`del_…`), as in the DELETE's `Deletion-Id`."))
        .parameter(query(
            "limit",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_LIMIT))
                .default(Some(json!(MAX_LIMIT))),
            &format!("Records per page, 1 to {MAX_LIMIT} (more → 400)."),
        ))
        .parameter(query("cursor", string(), "The `records_next_cursor` of the previous page (empty: the first)."))
        .response("200", json_response("The operation.", schema_ref("DeletionOperation")))
        .response("400", problem("`invalid-parameter`: a bad `limit` or `cursor`."))
        .response("404", problem("`not-found`: no such operation in this tenant."));
    let restore = operation("deletions_restore".into(), "deletions", "Restore exactly what a deletion took")
        .description(Some("All or nothing: every record the operation deleted and that is still deleted by it."))
        .parameter(id_param("The deletion id."))
        .response("200", json_response("The records restored.", schema_ref("RestoredOperation")))
        .response("404", problem("`not-found`: no such operation in this tenant."))
        .response(
            "409",
            problem("`restore-conflict`: `conflicts` lists every record that cannot come back; nothing was restored."),
        );
    paths
        .path("/v1/deletions/{id}", PathItem::new(HttpMethod::Get, authenticated(get, "read_deleted").build()))
        .path("/v1/deletions/{id}:restore", PathItem::new(HttpMethod::Post, authenticated(restore, "restore").build()))
}

// ---------------------------------------------------------------------------------------
// Keys and system endpoints

fn key_paths(paths: PathsBuilder) -> PathsBuilder {
    let create = operation("keys_create".into(), "keys", "Create a key")
        .description(Some(
            "For the calling key's own tenant only, with scopes the calling key holds; operators create keys for \
             other tenants with `tombstone keys create`. The secret is shown once.",
        ))
        .request_body(Some(json_body("NewKey", &["application/json"], "The key.")))
        .response("201", json_response("The key, with its secret (shown once).", schema_ref("CreatedKey")))
        .response("400", problem("`malformed`: not JSON; `invalid-parameter`: a query parameter."))
        .response("422", problem("`validation`: a bad tenant, scope, name or unknown member (`errors`)."));
    let list = operation("keys_list".into(), "keys", "List keys")
        .description(Some("Never their secrets."))
        .parameter(query(
            "limit",
            ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(MAX_LIMIT)),
            "Page size.",
        ))
        .parameter(query("cursor", string(), "The `next_cursor` of the previous page."))
        .parameter(query("tenant", string(), "Only this tenant's keys; another tenant's are never listed."))
        .response("200", json_response("A page of the calling key's tenant's keys.", schema_ref("KeyList")))
        .response("400", problem("`invalid-parameter`: an unknown or malformed parameter."));
    let get = operation("keys_get".into(), "keys", "Get a key")
        .parameter(id_param("The key id (`key_…`)."))
        .response("200", json_response("The key (never its secret).", schema_ref("Key")))
        .response("404", problem("`not-found`: no such key in this tenant."));
    let revoke = operation("keys_revoke".into(), "keys", "Revoke a key")
        .description(Some("Deleted at once (credentials are never soft-deleted); refused everywhere within 1 s."))
        .parameter(id_param("The key id (`key_…`)."))
        .response("204", response("Revoked."))
        .response("404", problem("`not-found`: no such key in this tenant."));
    paths
        .path(
            "/v1/keys",
            PathItem::new(
                HttpMethod::Post,
                authenticated(body_errors(create), "admin")
                    .response(
                        "403",
                        problem(
                            "`forbidden`: the key lacks `admin` or a scope it asks for (named in `missing_scope`), \
                             or the body names another tenant (no `missing_scope`).",
                        ),
                    )
                    .build(),
            ),
        )
        .path("/v1/keys", PathItem::new(HttpMethod::Get, authenticated(list, "admin").build()))
        .path("/v1/keys/{id}", PathItem::new(HttpMethod::Get, authenticated(get, "admin").build()))
        .path("/v1/keys/{id}", PathItem::new(HttpMethod::Delete, authenticated(revoke, "admin").build()))
}

/// Operations anyone may call: `security: []`.
fn public(operation: OperationBuilder) -> Operation {
    operation.securities(Some(Vec::<SecurityRequirement>::new())).build()
}

fn system_paths(paths: PathsBuilder) -> PathsBuilder {
    let healthz = operation("healthz".into(), "system", "Liveness: the process runs")
        .response("200", json_response("`{\"status\": \"ok\"}`", schema_ref("Status")));
    let readyz = operation("readyz".into(), "system", "Readiness: the database answers")
        .response("200", json_response("`{\"status\": \"ready\"}`", schema_ref("Status")))
        .response("503", problem("`unavailable`: the database does not answer."));
    let openapi = operation("openapi".into(), "system", "This document").response(
        "200",
        json_response("The OpenAPI 3.1 document of this server's configuration.", ObjectBuilder::new()),
    );
    let metrics = operation("metrics".into(), "system", "Prometheus metrics").response(
        "200",
        response("The Prometheus text exposition format.")
            .content("text/plain", ContentBuilder::new().schema(Some(string())).build()),
    );
    paths
        .path("/metrics", PathItem::new(HttpMethod::Get, public(metrics)))
        .path("/healthz", PathItem::new(HttpMethod::Get, public(healthz)))
        .path("/readyz", PathItem::new(HttpMethod::Get, public(readyz)))
        .path("/openapi.json", PathItem::new(HttpMethod::Get, public(openapi)))
}

/// `GET /v1/whoami` and `GET /v1/collections`: what the dashboard needs before anything else.
fn dashboard_paths(paths: PathsBuilder) -> PathsBuilder {
    let me = closed(
        ObjectBuilder::new()
            .property("tenant", string())
            .property("key_id", string())
            .property("name", ObjectBuilder::new().schema_type(nullable(Type::String)))
            .property("scopes", array_of(string().description(Some("`read`, `delete:products`, …"))))
            .required("tenant")
            .required("key_id")
            .required("name")
            .required("scopes"),
    );
    let mut whoami = operation("whoami".into(), "dashboard", "Who the calling key is")
        .description(Some("Any valid key may ask: its tenant, id, name and scopes (never its secret)."))
        .response("200", json_response("The calling key.", me))
        .response("400", problem("`invalid-parameter`: it takes no parameter."));
    whoami = authenticated(whoami, "any").response(
        "403",
        problem("`forbidden`: not answered by this operation (any valid key may ask); listed as every operation's is."),
    );
    let count = || ObjectBuilder::new().schema_type(nullable(Type::Integer)).minimum(Some(0));
    let counts = closed(
        ObjectBuilder::new()
            .property("active", count().description(Some("Neither deleted nor archived (`null` without `read`).")))
            .property("archived", count().description(Some("Archived, not deleted (`null` without `read`).")))
            .property("deleted", count().description(Some("In the trash (`null` without `read_deleted`).")))
            .property(
                "expiring_7d",
                count()
                    .description(Some("In the trash, not held, purged within 7 days (`null` without `read_deleted`).")),
            )
            .property("held", count().description(Some("Under a legal hold (`null` without `read_deleted`).")))
            .required("active")
            .required("archived")
            .required("deleted")
            .required("expiring_7d")
            .required("held"),
    );
    let field = ObjectBuilder::new()
        .property("name", string())
        .property("type", string())
        .property("required", boolean())
        .property("search", boolean())
        .property("pii", boolean())
        .property(
            "ref",
            closed(ObjectBuilder::new().property("collection", string()).property("on_delete", string()))
                .description(Some("For `ref` fields: the target and its policy.")),
        );
    let collection = closed(
        ObjectBuilder::new()
            .property("name", string())
            .property("delete", string().description(Some("`soft` or `hard`.")))
            .property("retention_seconds", integer())
            .property(
                "archive_after_seconds",
                integer()
                    .schema_type(nullable(Type::Integer))
                    .description(Some("Records not updated for this long are archived (§17); null: never.")),
            )
            .property("require_if_match", boolean())
            .property("unique", array_of(array_of(string())))
            .property("fields", array_of(field))
            .property("counts", counts)
            .required("name")
            .required("counts")
            .required("fields"),
    );
    let list = closed(
        ObjectBuilder::new()
            .property("items", array_of(collection))
            .property("next_cursor", ObjectBuilder::new().schema_type(Type::Null))
            .required("items")
            .required("next_cursor"),
    );
    let collections = operation("collections_list".into(), "dashboard", "The collections with their counts")
        .description(Some(
            "The collections the key may read, with their declared fields and this tenant's counts. \
             Counts of deleted records need `read_deleted` on the collection; without it they are `null`.",
        ))
        .response("200", json_response("Every collection the key may read (one page).", list))
        .response("400", problem("`invalid-parameter`: it takes no parameter."));
    paths
        .path("/v1/whoami", PathItem::new(HttpMethod::Get, whoami.build()))
        .path("/v1/collections", PathItem::new(HttpMethod::Get, authenticated(collections, "read").build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pascal_case_names() {
        assert_eq!(pascal_case("products"), "Products");
        assert_eq!(pascal_case("cart_items"), "CartItems");
        assert_eq!(pascal_case("a__b2"), "AB2");
    }

    #[test]
    fn clashing_collection_names_get_a_suffix() {
        let config = tombstone_domain::config::Config::parse(
            "[collections.products.fields]\nx = { type = \"string\" }\n\
             [collections.new_products.fields]\nx = { type = \"string\" }\n\
             [collections.problem.fields]\nx = { type = \"string\" }\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let names = SchemaNames::for_schema(&config.schema);
        assert_eq!(names.0["products"].new, "NewProducts");
        assert_eq!(names.0["new_products"].record, "NewProducts_2");
        assert_eq!(names.0["problem"].record, "Problem_2");
    }

    #[test]
    fn durations_read_like_the_config() {
        assert_eq!(human_duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
    }
}
