//! `--demo`: the shop schema under ./tombstone-data, demo data seeded once, and an admin
//! key printed on first start.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use tombstone_domain::config::Config;
use tombstone_domain::files::FileMeta;
use tombstone_domain::lifecycle::{Actor, ArchiveRequest};
use tombstone_domain::record::parse_create;
use tombstone_domain::scope::parse_scopes;
use tombstone_domain::time::Clock;
use tombstone_server::files::Files;
use tombstone_server::keys::create_key;
use tombstone_store::FileUpload;
use tombstone_store::prelude::*;

/// The demo schema.
pub const DEMO_TOML: &str = include_str!("demo.toml");

/// The tenant demo data and the demo admin key belong to.
pub const DEMO_TENANT: &str = "demo";

/// The demo configuration, rooted at `dir`.
///
/// # Errors
/// Never for the shipped schema; kept fallible so a broken edit shows up at once.
pub fn config(dir: &Path) -> anyhow::Result<Config> {
    Config::parse(DEMO_TOML, dir).map_err(|e| anyhow::anyhow!("demo schema: {e}"))
}

/// Seeds demo data and creates the admin key on first start; prints what a newcomer needs
/// (`addr`: where the server listens, already bound, so a key is never made and lost to a
/// port that turns out to be taken).
pub async fn prepare(
    config: &Config,
    store: &Arc<dyn Store>,
    files: Option<&Files>,
    clock: &dyn Clock,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    if store.get_meta("demo.seeded").await?.is_none() {
        seed(config, store, files, clock).await.context("seeding demo data")?;
        store.set_meta("demo.seeded", "1").await?;
    }
    if store.get_meta("demo.admin_key").await?.is_none() {
        let scopes = parse_scopes("admin").map_err(anyhow::Error::msg)?;
        let key = create_key(store.as_ref(), DEMO_TENANT, scopes, Some("demo admin".into()), clock.now()).await?;
        store.set_meta("demo.admin_key", &key.key.id).await?;
        eprintln!("demo admin key (tenant {DEMO_TENANT}, shown once): {}", key.secret);
        eprintln!("  try: curl -H 'Authorization: Bearer {}' http://{addr}/v1/products", key.secret);
        eprintln!("  dashboard: http://{addr}/ui/ (sign in with this key)");
    } else {
        eprintln!(
            "demo admin key was printed on first start; to make another: tombstone keys create --tenant {DEMO_TENANT} --scopes admin"
        );
        eprintln!("  dashboard: http://{addr}/ui/");
    }
    Ok(())
}

async fn insert(
    config: &Config,
    store: &Arc<dyn Store>,
    clock: &dyn Clock,
    collection: &str,
    body: Value,
) -> anyhow::Result<String> {
    let coll = config.schema.collection(collection).with_context(|| format!("demo collection {collection}"))?;
    let parsed = parse_create(coll, &body).map_err(|e| anyhow::anyhow!("demo {collection}: {e}"))?;
    let now = clock.now();
    let record = parsed.into_record(DEMO_TENANT, collection, now);
    let actor = Actor { tenant: DEMO_TENANT.into(), key_id: "system".into(), request_id: "demo-seed".into() };
    Ok(store.create_record(&actor, coll, record, None).await?.id)
}

async fn seed(config: &Config, store: &Arc<dyn Store>, files: Option<&Files>, clock: &dyn Clock) -> anyhow::Result<()> {
    let kitchen = insert(config, store, clock, "categories", json!({"name": "Kitchen", "slug": "kitchen"})).await?;
    let office = insert(config, store, clock, "categories", json!({"name": "Office", "slug": "office"})).await?;
    let mut products = Vec::new();
    for (i, (name, cat)) in [
        ("Blue mug", &kitchen),
        ("Teapot", &kitchen),
        ("Chef's knife", &kitchen),
        ("Notebook", &office),
        ("Fountain pen", &office),
        ("Desk lamp", &office),
    ]
    .into_iter()
    .enumerate()
    {
        let id = insert(
            config,
            store,
            clock,
            "products",
            json!({"sku": format!("SKU-{}", 1001 + i), "name": name, "price_cents": 500 + 250 * i, "category_id": cat, "description": format!("A fine {}", name.to_lowercase())}),
        )
        .await?;
        products.push(id);
    }
    let ada =
        insert(config, store, clock, "customers", json!({"email": "ada@example.com", "name": "Ada Lovelace"})).await?;
    let alan =
        insert(config, store, clock, "customers", json!({"email": "alan@example.com", "name": "Alan Turing"})).await?;
    let first = insert(
        config,
        store,
        clock,
        "orders",
        json!({"customer_id": ada, "total_cents": 1750, "status": "paid", "placed_at": "2026-11-01T10:00:00Z"}),
    )
    .await?;
    let second = insert(
        config,
        store,
        clock,
        "orders",
        json!({"customer_id": alan, "total_cents": 500, "status": "shipped", "placed_at": "2026-11-03T15:30:00Z"}),
    )
    .await?;
    if let Some(files) = files {
        attach_invoice(config, store, files, clock, &first, "Ada Lovelace", 1750).await?;
        attach_invoice(config, store, files, clock, &second, "Alan Turing", 500).await?;
    }
    // An order long delivered, archived as `archive_after` would: out of the order list
    // (`GET /v1/orders?filter[archived]=true` shows it), still readable by id.
    let old = insert(
        config,
        store,
        clock,
        "orders",
        json!({"customer_id": ada, "total_cents": 2400, "status": "delivered", "placed_at": "2026-05-02T09:15:00Z"}),
    )
    .await?;
    let orders = config.schema.collection("orders").context("demo collection orders")?;
    let actor = Actor { tenant: DEMO_TENANT.into(), key_id: "system".into(), request_id: "demo-seed".into() };
    let request = ArchiveRequest::Archive { reason: Some("delivered long ago".into()) };
    store.archive_record(&actor, orders, &old, request, None, clock.now()).await?;
    insert(config, store, clock, "cart_items", json!({"product_id": products[0], "customer_id": ada, "quantity": 2}))
        .await?;
    insert(config, store, clock, "cart_items", json!({"product_id": products[3], "customer_id": alan, "quantity": 1}))
        .await?;
    insert(
        config,
        store,
        clock,
        "wishlist_items",
        json!({"product_id": products[0], "customer_id": alan, "note": "for the office"}),
    )
    .await?;
    insert(config, store, clock, "webhook_secrets", json!({"name": "billing", "secret": "s3cr3t-demo-value"})).await?;
    Ok(())
}

/// Stores an invoice PDF for a demo order, through the same steps as `PUT
/// /v1/orders/{id}/files/invoice`.
async fn attach_invoice(
    config: &Config,
    store: &Arc<dyn Store>,
    files: &Files,
    clock: &dyn Clock,
    order: &str,
    customer: &str,
    total_cents: i64,
) -> anyhow::Result<()> {
    let orders = config.schema.collection("orders").context("demo collection orders")?;
    let pdf = invoice_pdf(order, customer, total_cents);
    let staged = files.stage_bytes(pdf.into(), 5 * 1024 * 1024).await?;
    files.keep(store.as_ref(), DEMO_TENANT, &staged, clock.now()).await?;
    let meta = FileMeta {
        content_type: "application/pdf".into(),
        size: staged.size,
        sha256: staged.sha256.clone(),
        uploaded_at: clock.now(),
    };
    let actor = Actor { tenant: DEMO_TENANT.into(), key_id: "system".into(), request_id: "demo-seed".into() };
    let upload = FileUpload { meta, upload_id: staged.upload_id };
    store.set_file(&actor, orders, order, "invoice", Some(upload), None, clock.now()).await?;
    Ok(())
}

/// A one-page PDF invoice (PDF 1.4: a catalog, a page, a Helvetica text stream, and the
/// cross-reference table with each object's byte offset).
fn invoice_pdf(order: &str, customer: &str, total_cents: i64) -> Vec<u8> {
    let text = format!(
        "BT /F1 20 Tf 72 720 Td (Tombstone demo shop - invoice) Tj ET\n\
         BT /F1 12 Tf 72 690 Td (Order {order}) Tj ET\n\
         BT /F1 12 Tf 72 670 Td (Customer: {customer}) Tj ET\n\
         BT /F1 12 Tf 72 650 Td (Total: {}.{:02} EUR) Tj ET\n",
        total_cents / 100,
        total_cents % 100
    );
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!("<< /Length {} >>\nstream\n{text}endstream", text.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::with_capacity(objects.len());
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    pdf
}
