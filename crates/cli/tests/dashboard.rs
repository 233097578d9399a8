//! The dashboard (`/ui/`) in a real headless Chromium, driven over WebDriver
//! (chromedriver + fantoccini) against the real binary serving the demo shop: sign in,
//! delete with the blast radius and Undo, find and restore in Recently deleted, a unique
//! conflict explained with its link, a hold that makes purge refuse, archive and unarchive
//! with the Archived view, versions compared and a revert, erasure behind a typed
//! confirmation, delete from the browse table, the Recently deleted filters, a child whose
//! parent is still deleted, purge pause/resume, the audit chain's verify status and Check
//! now, paging past 50 records, an eventual cascade in progress on its operation page (on
//! a second server whose cascade lease the test holds, then gives back), a read-only key
//! and another tenant's key. Every page is checked with
//! axe-core (vendored in `tests/fixtures/axe.min.js`, MPL-2.0): no serious or critical
//! violation.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`;
//! `.ci/run` installs them). Without them the test fails under `CI=true` and is skipped
//! with a printed reason elsewhere. A failing scenario saves a screenshot and names its
//! path. With `TOMBSTONE_DASHBOARD_SHOTS=DIR` the main pages are also saved to DIR (that is
//! how docs/img/ is made).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, Workspace, run_bounded};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const AXE: &str = include_str!("fixtures/axe.min.js");

/// How long the page may take to show what a step waits for (a ceiling for a slow,
/// shared machine; the steps do not measure time).
const PATIENCE: Duration = Duration::from_secs(30);

type Result<T = (), E = String> = std::result::Result<T, E>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into())
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result {
    if condition { Ok(()) } else { Err(message()) }
}

trait Context<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// chromedriver, killed on every exit path

struct Driver {
    child: Child,
    port: u16,
    /// Chromium's profile: a fresh one per run.
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Starts chromedriver, or says why it cannot run here.
fn start_driver() -> Option<Driver> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
    if !missing.is_empty() {
        let reason =
            format!("{} missing: apt-get install -y chromium chromium-driver (.ci/run does it)", missing.join(" and "));
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
        eprintln!("SKIPPED dashboard browser test: {reason}");
        return None;
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromedriver");
    let driver = Driver { child, port, profile: tempfile::tempdir().expect("profile dir") };
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let profile = driver.profile.path().join("profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1100,800",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().expect("object").clone().into_iter().collect();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in Chromium")
}

// ---------------------------------------------------------------------------------------
// The page, seen through the browser

struct Ui {
    c: Client,
    base: String,
    http: reqwest::Client,
    admin: String,
    shots: Option<PathBuf>,
    loads: std::sync::atomic::AtomicU32,
}

impl Ui {
    async fn js(&self, script: &str) -> Result<Value> {
        self.c.execute(script, vec![]).await.ctx(script)
    }

    /// Waits until the JavaScript expression is truthy.
    async fn until(&self, expr: &str) -> Result {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.js(&format!("return !!({expr});")).await?.as_bool() == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return fail(format!("never true: {expr}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` is on the page; returns its text.
    async fn text(&self, css: &str) -> Result<String> {
        self.until(&format!("document.querySelector({css:?})")).await?;
        self.c.find(Locator::Css(css)).await.ctx(css)?.text().await.ctx(css)
    }

    async fn click(&self, css: &str) -> Result {
        self.until(&format!("document.querySelector({css:?}) && !document.querySelector({css:?}).disabled")).await?;
        self.c.find(Locator::Css(css)).await.ctx(css)?.click().await.ctx(css)
    }

    async fn type_into(&self, css: &str, text: &str) -> Result {
        self.until(&format!("document.querySelector({css:?})")).await?;
        let el = self.c.find(Locator::Css(css)).await.ctx(css)?;
        el.clear().await.ctx(css)?;
        el.send_keys(text).await.ctx(css)
    }

    /// Clicks the button whose text starts with `text` inside `scope`.
    async fn click_button(&self, scope: &str, text: &str) -> Result {
        let find = format!(
            "[...document.querySelectorAll({:?})].find(b => b.textContent.trim().startsWith({text:?}) && !b.disabled)",
            format!("{scope} button")
        );
        self.until(&find).await?;
        self.js(&format!("{find}.click(); return null;")).await.map(drop)
    }

    /// Opens a route of the app in a freshly loaded page (a new query string each time,
    /// so that no earlier page can be mistaken for it) and waits until it is shown.
    async fn open(&self, route: &str) -> Result {
        let n = self.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.c.goto(&format!("{}/ui/?load={n}#{route}", self.base)).await.ctx(route)?;
        self.until("document.querySelector('main').dataset.rendered").await
    }

    async fn sign_in(&self, key: &str) -> Result {
        self.c.goto(&format!("{}/ui/", self.base)).await.ctx("open /ui/")?;
        self.js("sessionStorage.clear(); return null;").await?;
        self.c.refresh().await.ctx("reload")?;
        // Keyboard only: the key field has the focus; type and press Enter.
        self.until("document.activeElement && document.activeElement.name === 'key'").await?;
        self.c.active_element().await.ctx("focus")?.send_keys(&format!("{key}\u{e007}")).await.ctx("type the key")?;
        self.until("document.querySelector('#collections') || document.querySelector('#sign-out')").await
    }

    /// Injects axe-core and asserts no serious or critical violation on the page as it is.
    async fn axe(&self, page: &str) -> Result {
        self.js(&format!("{AXE}\n;return null;")).await?;
        let found = self
            .c
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations
                   .filter(v => v.impact === 'serious' || v.impact === 'critical')
                   .map(v => ({id: v.id, impact: v.impact, help: v.help,
                               nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))),
                   e => done([{id: 'axe-error', help: String(e)}]));",
                vec![],
            )
            .await
            .ctx("axe.run")?;
        check(found.as_array().is_some_and(Vec::is_empty), || format!("axe on {page}: {found:#}"))
    }

    async fn shot(&self, name: &str) -> Result {
        if let Some(dir) = &self.shots {
            let png = self.c.screenshot().await.ctx("screenshot")?;
            std::fs::write(dir.join(format!("{name}.png")), png).ctx("write screenshot")?;
        }
        Ok(())
    }

    // The API, for set-up and for checking what the page did.

    async fn api(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, &self.admin, None).await
    }

    async fn create(&self, collection: &str, body: Value) -> Value {
        let (status, record) =
            self.api(reqwest::Method::POST, &format!("/v1/{collection}"), &self.admin, Some(body)).await;
        assert_eq!(status, 201, "{record}");
        record
    }

    async fn delete(&self, path: &str) {
        let (status, body) = self.api(reqwest::Method::DELETE, path, &self.admin, None).await;
        assert_eq!(status, 204, "{body}");
    }

    async fn first_id(&self, path: &str) -> String {
        let (status, page) = self.get(path).await;
        assert_eq!(status, 200, "{page}");
        page["items"][0]["id"].as_str().unwrap_or_else(|| panic!("no record at {path}: {page}")).to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios

async fn signs_in(ui: &Ui) -> Result {
    ui.c.goto(&format!("{}/ui", ui.base)).await.ctx("open /ui")?;
    let url = ui.c.current_url().await.ctx("url")?;
    check(url.path() == "/ui/", || format!("/ui did not redirect to /ui/: {url}"))?;
    ui.js("sessionStorage.clear(); return null;").await?;
    ui.c.refresh().await.ctx("reload")?;
    ui.text("#signin h1").await?;
    ui.axe("sign in").await?;
    ui.shot("signin").await?;
    ui.type_into("#signin input[name=key]", "tsk_key_00_wrongwrongwrongwrongwrongwrongwrong").await?;
    ui.click("#signin button[type=submit]").await?;
    ui.until("document.querySelector('#signin-error').textContent.length > 0").await?;
    let said = ui.text("#signin-error").await?;
    check(said.contains("not accepted"), || format!("a wrong key should say so plainly: {said:?}"))?;

    ui.sign_in(&ui.admin).await?;
    let products = ui.text("#collections tr[data-collection=products]").await?;
    let (_, page) = ui.get("/v1/products?count=true&limit=1").await;
    let active = page["total"].as_u64().expect("total");
    check(products.contains(&format!("products {active}")), || format!("products row: {products:?}, {active} active"))?;
    // The key lives in this tab's session storage, never in the address.
    let stored = ui.js("return sessionStorage.getItem('tombstone.key');").await?;
    check(stored == json!(ui.admin), || "the key is not in session storage".into())?;
    let url = ui.c.current_url().await.ctx("url")?;
    check(!url.as_str().contains(&ui.admin), || "the key is in the URL".into())?;
    ui.axe("collections").await?;
    ui.shot("collections").await
}

async fn deletes_with_blast_radius_then_undoes(ui: &Ui) -> Result {
    let mug = ui.first_id("/v1/products?filter[sku]=SKU-1001").await;
    ui.open(&format!("/c/products/{mug}")).await?;
    ui.until("document.querySelector('#history')").await?;
    let out = ui.text("#refs-out").await?;
    check(out.contains("category_id: categories") && out.contains("restrict"), || {
        format!("what it refers to: {out:?}")
    })?;
    let refs_in = ui.text("#refs-in").await?;
    check(refs_in.contains("1 cart_items record via product_id (on delete: cascade)"), || {
        format!("what refers to it: {refs_in:?}")
    })?;
    ui.axe("record").await?;
    ui.shot("record").await?;
    ui.click("#delete").await?;
    ui.until("document.querySelector('#blast')").await?;
    let total = ui.js("return document.querySelector('#blast').dataset.total;").await?;
    check(total == json!("3"), || format!("the blast radius counts the product and its 2 children: {total}"))?;
    for child in ["cart_items", "wishlist_items"] {
        let n = ui
            .js(&format!("return document.querySelector('#blast-counts [data-collection={child}]')?.dataset.count;"))
            .await?;
        check(n == json!("1"), || format!("{child} in the blast radius: {n}"))?;
    }
    let words = ui.text("#blast-words").await?;
    check(words.contains("also deletes 2 other records"), || format!("blast radius in words: {words:?}"))?;
    let button = ui.text("#confirm-delete").await?;
    check(button == "Delete 3 records", || format!("confirm button: {button:?}"))?;
    ui.axe("delete dry run").await?;
    ui.shot("delete").await?;
    ui.type_into("#blast input[name=reason]", "customer asked").await?;
    ui.click("#confirm-delete").await?;
    ui.until("document.querySelector('.toast .toast-action')").await?;
    ui.shot("undo").await?;
    let (status, _) = ui.get(&format!("/v1/products/{mug}")).await;
    check(status == 404, || format!("the product is deleted: GET answered {status}"))?;
    let (_, deleted) = ui.get(&format!("/v1/products/{mug}?include=deleted")).await;
    check(deleted["delete_reason"] == "customer asked", || format!("the reason went along: {deleted}"))?;

    // Keyboard only: the Undo button has the focus; Enter presses it.
    ui.until("document.activeElement && document.activeElement.textContent === 'Undo'").await?;
    ui.c.active_element().await.ctx("focus")?.send_keys("\u{e007}").await.ctx("Enter on Undo")?;
    ui.until(
        "[...document.querySelectorAll('.toast')].some(t => t.textContent.includes('Undone: 3 records restored'))",
    )
    .await?;
    let (status, _) = ui.get(&format!("/v1/products/{mug}")).await;
    check(status == 200, || format!("Undo brings the product back: {status}"))?;
    let (_, carts) = ui.get(&format!("/v1/cart_items?filter[product_id]={mug}&count=true")).await;
    let (_, wishes) = ui.get(&format!("/v1/wishlist_items?filter[product_id]={mug}&count=true")).await;
    check(carts["total"] == 1 && wishes["total"] == 1, || format!("Undo brings the children back: {carts} {wishes}"))
}

async fn finds_and_restores_in_recently_deleted(ui: &Ui) -> Result {
    let mug = ui.first_id("/v1/products?filter[sku]=SKU-1001").await;
    ui.open(&format!("/c/products/{mug}")).await?;
    ui.click("#delete").await?;
    ui.type_into("#blast input[name=reason]", "spring cleaning").await?;
    ui.click("#confirm-delete").await?;
    ui.until("document.querySelector('#deleted-banner')").await?;
    ui.axe("deleted record").await?;

    ui.open("/trash").await?;
    let row = format!("#trash tr[data-id='{mug}']");
    let text = ui.text(&row).await?;
    check(text.contains("Blue mug") && text.contains("spring cleaning") && text.contains("with 2 more"), || {
        format!("the trash row says what, why and what went together: {text:?}")
    })?;
    ui.axe("recently deleted").await?;
    ui.shot("trash").await?;

    // What was deleted together: the operation page.
    let op = ui
        .js(&format!("return document.querySelector(\"{row} a[href^='#/deletions/']\").getAttribute('href');"))
        .await?;
    let op = op.as_str().expect("operation link").trim_start_matches('#').to_string();
    ui.open(&op).await?;
    ui.until("document.querySelectorAll('#op-records li').length === 3").await?;
    ui.until("document.querySelector('#propagation td')").await?;
    ui.axe("deletion operation").await?;
    ui.shot("deletion").await?;

    ui.open("/trash/products").await?;
    ui.click(&format!("{row} button.restore-op")).await?;
    ui.until("[...document.querySelectorAll('.toast')].some(t => t.textContent.includes('Restored the operation: 3 records'))").await?;
    let (status, _) = ui.get(&format!("/v1/products/{mug}")).await;
    check(status == 200, || format!("restored: {status}"))?;
    ui.until(&format!("!document.querySelector(\"{row}\")")).await
}

async fn explains_a_unique_conflict_with_a_link(ui: &Ui) -> Result {
    let old = ui.create("products", json!({"sku": "SKU-9", "name": "Old mug"})).await;
    let old_id = old["id"].as_str().expect("id");
    ui.delete(&format!("/v1/products/{old_id}")).await;
    let green = ui.create("products", json!({"sku": "SKU-9", "name": "Green mug"})).await;
    let green_id = green["id"].as_str().expect("id");

    ui.open("/trash/products").await?;
    ui.click(&format!("#trash tr[data-id='{old_id}'] button.restore")).await?;
    let said = ui.text("#conflict").await?;
    check(said.contains("“Old mug” cannot come back: sku SKU-9 is now used by “Green mug”"), || {
        format!("the conflict explained: {said:?}")
    })?;
    ui.axe("restore conflict").await?;
    ui.shot("conflict").await?;
    let href = ui.js("return document.querySelector('#conflict a.conflict-link').getAttribute('href');").await?;
    check(href == json!(format!("#/c/products/{green_id}")), || format!("link to the record in the way: {href}"))?;
    ui.click("#conflict a.conflict-link").await?;
    ui.until("document.querySelector('main h1').textContent.includes('Green mug')").await
}

async fn a_hold_makes_purge_refuse(ui: &Ui) -> Result {
    let held = ui.create("products", json!({"sku": "SKU-H", "name": "Held lamp"})).await;
    let id = held["id"].as_str().expect("id").to_string();
    ui.delete(&format!("/v1/products/{id}")).await;

    // The page offers purge; meanwhile a hold is placed (from elsewhere): purge refuses.
    ui.open(&format!("/c/products/{id}")).await?;
    ui.until("document.querySelector('#deleted-banner')").await?;
    let (status, _) = ui
        .api(reqwest::Method::POST, &format!("/v1/products/{id}:hold"), &ui.admin, Some(json!({"case": "K-7"})))
        .await;
    assert_eq!(status, 201);
    ui.click_button("#actions", "Delete permanently").await?;
    let warning = ui.text("#purge-confirm").await?;
    check(warning.contains("cannot be undone"), || format!("the purge confirm: {warning:?}"))?;
    ui.axe("purge confirm").await?;
    ui.click("#confirm-purge").await?;
    let refused = ui.text("#panel .error").await?;
    check(refused.contains("legal hold"), || format!("purge refused with the reason: {refused:?}"))?;
    let (status, _) = ui.get(&format!("/v1/products/{id}?include=deleted")).await;
    check(status == 200, || "a held record is still there".into())?;

    // Reloaded, the page shows the hold and offers no purge; release it, place one here.
    ui.open(&format!("/c/products/{id}")).await?;
    ui.until("document.querySelector('#held-banner')").await?;
    ui.until("[...document.querySelectorAll('#actions button')].every(b => !b.textContent.startsWith('Delete permanently') || b.disabled)").await?;
    ui.click("#hold-list button.release").await?;
    ui.until("!document.querySelector('#held-banner') && document.querySelector('#place-hold')").await?;
    ui.type_into("#place-hold input[name=case]", "K-8").await?;
    ui.type_into("#place-hold input[name=hold-reason]", "litigation").await?;
    ui.click("#place-hold button[type=submit]").await?;
    ui.until("document.querySelector('#held-banner') && document.querySelector('#hold-list')").await?;
    let listed = ui.text("#hold-list").await?;
    check(listed.contains("K-8") && listed.contains("litigation"), || format!("the hold listed: {listed:?}"))?;
    ui.axe("held record").await?;
    let (_, record) = ui.get(&format!("/v1/products/{id}?include=deleted")).await;
    check(record["legal_hold"] == true, || format!("the hold placed through the page: {record}"))?;
    ui.open("/trash/products").await?;
    let row = ui.text(&format!("#trash tr[data-id='{id}']")).await?;
    check(row.contains("held") && row.contains("Delete permanently (held)"), || {
        format!("trash row of a held record: {row:?}")
    })
}

async fn archives_and_unarchives_in_the_archived_view(ui: &Ui) -> Result {
    // The demo seeds one order archived; the collections page counts it apart.
    ui.open("/").await?;
    let (_, active) = ui.get("/v1/orders?count=true&limit=1").await;
    let row = ui.text("#collections tr[data-collection=orders]").await?;
    check(row.starts_with(&format!("orders {} 1 ", active["total"])), || format!("orders row: {row:?}"))?;

    let paid = ui.first_id("/v1/orders?filter[status]=paid").await;
    ui.open(&format!("/c/orders/{paid}")).await?;
    ui.click("#archive").await?;
    ui.type_into("#archive-confirm input[name=archive-reason]", "closed").await?;
    ui.axe("archive confirm").await?;
    ui.click("#confirm-archive").await?;
    ui.until("document.querySelector('#archived-banner')").await?;
    let banner = ui.text("#archived-banner").await?;
    check(banner.contains("closed") && banner.contains("you"), || format!("the archived banner: {banner:?}"))?;
    let (_, record) = ui.get(&format!("/v1/orders/{paid}")).await;
    check(record["archived"] == true && record["archive_reason"] == "closed", || format!("archived: {record}"))?;
    check(ui.js("return !!document.querySelector('#unarchive');").await? == json!(true), || {
        "an archived record offers Unarchive".into()
    })?;
    ui.axe("archived record").await?;

    // The Archived view lists both, each with Unarchive; the plain list has neither.
    ui.open("/c/orders?archived=1").await?;
    ui.until("document.querySelectorAll('#records tbody tr').length === 2").await?;
    ui.axe("archived view").await?;
    ui.shot("archived").await?;
    ui.click(&format!("#records tr[data-id='{paid}'] button.unarchive")).await?;
    ui.until(&format!("!document.querySelector(\"#records tr[data-id='{paid}']\")")).await?;
    let (_, record) = ui.get(&format!("/v1/orders/{paid}")).await;
    check(record["archived"] == false, || format!("unarchived from the archived view: {record}"))?;
    ui.open("/c/orders").await?;
    ui.until(&format!("document.querySelector(\"#records tr[data-id='{paid}']\")")).await?;
    let states =
        ui.js("return [...document.querySelectorAll('#records tbody tr td.state')].map(td => td.textContent);").await?;
    check(states.as_array().is_some_and(|s| s.iter().all(|t| t != "archived")), || {
        format!("plain list states: {states}")
    })
}

async fn compares_versions_and_reverts(ui: &Ui) -> Result {
    let made = ui.create("products", json!({"sku": "SKU-HIST", "name": "Teal mug", "price_cents": 700})).await;
    let id = made["id"].as_str().ok_or("no id")?.to_string();
    let (status, _) = ui
        .api(
            reqwest::Method::PATCH,
            &format!("/v1/products/{id}"),
            &ui.admin,
            Some(json!({"name": "Navy mug", "price_cents": 900})),
        )
        .await;
    check(status == 200, || format!("patch answered {status}"))?;
    ui.open(&format!("/c/products/{id}")).await?;
    // Newest first.
    ui.until("document.querySelectorAll('#versions tbody tr').length === 2").await?;
    let order =
        ui.js("return [...document.querySelectorAll('#versions tbody tr')].map(tr => tr.dataset.version);").await?;
    check(order == json!(["2", "1"]), || format!("versions order: {order}"))?;
    ui.axe("versions").await?;
    // Compare 1 with 2: only what changed, old and new side by side.
    ui.js("document.querySelector('select[name=diff-from]').value = '1'; document.querySelector('select[name=diff-to]').value = '2'; return null;").await?;
    ui.click("#compare").await?;
    ui.until("document.querySelector('table#diff')").await?;
    let rows = ui.js("return [...document.querySelectorAll('#diff tbody tr')].map(tr => [tr.dataset.field, ...[...tr.querySelectorAll('td')].map(td => td.textContent)]);").await?;
    check(rows == json!([["name", "Teal mug", "Navy mug"], ["price_cents", "700", "900"]]), || {
        format!("diff rows: {rows}")
    })?;
    ui.axe("versions diff").await?;
    ui.shot("versions").await?;
    // Revert to 1: a new version 3 with version 1's fields.
    ui.click("#revert-1").await?;
    ui.until("document.querySelectorAll('#versions tbody tr').length === 3").await?;
    let (_, record) = ui.get(&format!("/v1/products/{id}")).await;
    check(record["version"] == 3 && record["name"] == "Teal mug" && record["price_cents"] == 700, || {
        format!("reverted: {record}")
    })?;
    let top = ui.text("#versions tbody tr:first-child").await?;
    check(top.contains("revert"), || format!("the newest version: {top:?}"))?;
    // Not offered for an archived record.
    ui.click("#archive").await?;
    ui.click("#confirm-archive").await?;
    ui.until("document.querySelector('#archived-banner')").await?;
    ui.until("document.querySelector('#revert-not-offered')").await?;
    check(ui.js("return document.querySelectorAll('#versions button').length;").await? == json!(0), || {
        "an archived record offers a revert".into()
    })
}

async fn erases_after_typing_the_id(ui: &Ui) -> Result {
    let ada = ui.first_id("/v1/customers?filter[email]=ada@example.com").await;
    ui.open(&format!("/c/customers/{ada}")).await?;
    ui.until("document.querySelector('#confirm-erase')").await?;
    check(ui.js("return document.querySelector('#confirm-erase').disabled;").await? == json!(true), || {
        "erase is offered before the id is typed".into()
    })?;
    ui.type_into("#erase input[name=confirm-id]", "not-the-id").await?;
    check(ui.js("return document.querySelector('#confirm-erase').disabled;").await? == json!(true), || {
        "erase is offered after a wrong id".into()
    })?;
    ui.type_into("#erase input[name=confirm-id]", &ada).await?;
    ui.click("#confirm-erase").await?;
    let receipt = ui.text("#erasure-receipt").await?;
    check(receipt.contains(&ada) && receipt.contains("audit entry"), || format!("the receipt: {receipt:?}"))?;
    ui.axe("erasure receipt").await?;
    ui.shot("erasure").await?;
    let (status, _) = ui.get(&format!("/v1/customers/{ada}?include=deleted")).await;
    check(status == 404, || format!("erased: GET answered {status}"))
}

async fn deletes_from_the_browse_table(ui: &Ui) -> Result {
    let lamp = ui.create("products", json!({"sku": "SKU-ROW", "name": "Row lamp"})).await;
    let id = lamp["id"].as_str().ok_or("no id")?.to_string();
    ui.open("/c/products?ff=sku&fv=SKU-ROW").await?;
    let row = format!("#records tr[data-id='{id}']");
    ui.click(&format!("{row} button.delete-row")).await?;
    // The same dialog as on the record page: the blast radius first.
    ui.until("document.querySelector('#blast')").await?;
    let total = ui.js("return document.querySelector('#blast').dataset.total;").await?;
    check(total == json!("1"), || format!("a product with nothing attached goes alone: {total}"))?;
    let words = ui.text("#blast-words").await?;
    check(words.contains("Only this record"), || format!("blast radius in words: {words:?}"))?;
    let heading = ui.text("#h-blast").await?;
    check(heading.contains("Row lamp"), || format!("the dialog names the row: {heading:?}"))?;
    ui.until("document.activeElement && document.activeElement.name === 'reason'").await?;
    ui.axe("delete from the browse table").await?;
    ui.type_into("#blast input[name=reason]", "row delete").await?;
    ui.click("#confirm-delete").await?;
    ui.until("document.querySelector('.toast .toast-action')").await?;
    ui.until(&format!("!document.querySelector(\"{row}\")")).await?;
    let (_, deleted) = ui.get(&format!("/v1/products/{id}?include=deleted")).await;
    check(deleted["deleted"] == true && deleted["delete_reason"] == "row delete", || format!("deleted: {deleted}"))?;
    ui.click(".toast .toast-action").await?;
    ui.until(&format!("document.querySelector(\"{row}\")")).await?;
    let (status, _) = ui.get(&format!("/v1/products/{id}")).await;
    check(status == 200, || format!("Undo from the browse table brings it back: {status}"))
}

async fn filters_recently_deleted(ui: &Ui, deleter: &str) -> Result {
    let mine = ui.create("products", json!({"sku": "SKU-F1", "name": "Filter vase"})).await;
    let mine = mine["id"].as_str().ok_or("no id")?.to_string();
    let theirs = ui.create("products", json!({"sku": "SKU-F2", "name": "Filter bowl"})).await;
    let theirs = theirs["id"].as_str().ok_or("no id")?.to_string();
    ui.delete(&format!("/v1/products/{mine}")).await;
    let (status, body) = ui.api(reqwest::Method::DELETE, &format!("/v1/products/{theirs}"), deleter, None).await;
    assert_eq!(status, 204, "{body}");
    let (_, who) = ui.api(reqwest::Method::GET, "/v1/whoami", deleter, None).await;
    let deleter_id = who["key_id"].as_str().ok_or("no key id")?.to_string();
    let (mine_row, theirs_row) = (format!("#trash tr[data-id='{mine}']"), format!("#trash tr[data-id='{theirs}']"));

    ui.open("/trash/products").await?;
    ui.until(&format!("document.querySelector(\"{mine_row}\") && document.querySelector(\"{theirs_row}\")")).await?;
    // Deleted by another key: typed, then Enter (keyboard only).
    ui.type_into("#trash-filters input[name=deleted_by]", &format!("{deleter_id}\u{e007}")).await?;
    ui.until(&format!("location.hash.includes('by=') && document.querySelector(\"{theirs_row}\") && !document.querySelector(\"{mine_row}\")")).await?;
    ui.axe("recently deleted, filtered by who").await?;
    // By me, combined with the day it was deleted (today): only mine.
    ui.click("#deleted-by-me").await?;
    ui.js("document.querySelector('#trash-filters input[name=deleted_from]').value = new Date().toLocaleDateString('en-CA'); return null;").await?;
    ui.click("#trash-filters button[type=submit]").await?;
    ui.until(&format!("location.hash.includes('from=') && document.querySelector(\"{mine_row}\") && !document.querySelector(\"{theirs_row}\")")).await?;
    ui.axe("recently deleted, combined filters").await?;
    ui.shot("trash-filters").await?;
    // Deleted on or before yesterday: none of these.
    ui.js("const d = new Date(); d.setDate(d.getDate() - 1); const f = document.querySelector('#trash-filters'); f.querySelector('input[name=deleted_from]').value = ''; f.querySelector('input[name=deleted_to]').value = d.toLocaleDateString('en-CA'); f.querySelector('input[name=deleted_by]').value = ''; return null;").await?;
    ui.click("#trash-filters button[type=submit]").await?;
    ui.until(&format!("location.hash.includes('to=') && document.querySelector('#trash-empty') && !document.querySelector(\"{mine_row}\") && !document.querySelector(\"{theirs_row}\")")).await?;
    // Expiring within a day (the window is 30 days): nothing; the empty state says why.
    ui.click("#clear-trash-filters").await?;
    ui.until(&format!("!location.hash.includes('to=') && document.querySelector(\"{mine_row}\")")).await?;
    ui.js("document.querySelector('#trash-filters select[name=expiring]').value = '1'; return null;").await?;
    ui.click("#trash-filters button[type=submit]").await?;
    let empty = ui.text("#trash-empty").await?;
    check(empty.contains("matches these filters"), || format!("the filtered empty state: {empty:?}"))?;
    ui.axe("recently deleted, nothing matches").await?;
    // Within 7 days… of 30: still nothing; any time: both again.
    ui.js("document.querySelector('#trash-filters select[name=expiring]').value = ''; return null;").await?;
    ui.click("#trash-filters button[type=submit]").await?;
    ui.until(&format!("document.querySelector(\"{mine_row}\") && document.querySelector(\"{theirs_row}\")")).await
}

async fn names_the_deleted_parent_of_a_child(ui: &Ui) -> Result {
    let lamp = ui.create("products", json!({"sku": "SKU-P", "name": "Parent lamp"})).await;
    let lamp = lamp["id"].as_str().ok_or("no id")?.to_string();
    let item = ui.create("cart_items", json!({"product_id": lamp, "quantity": 2})).await;
    let item = item["id"].as_str().ok_or("no id")?.to_string();
    ui.delete(&format!("/v1/products/{lamp}")).await;
    ui.open("/trash/cart_items").await?;
    ui.click(&format!("#trash tr[data-id='{item}'] button.restore")).await?;
    let said = ui.text("#conflict").await?;
    check(said.contains(&format!("cannot come back while its parent is deleted: products {lamp}")), || {
        format!("the deleted parent named: {said:?}")
    })?;
    let href = ui.js("return document.querySelector('#conflict a.conflict-link').getAttribute('href');").await?;
    check(href == json!(format!("#/c/products/{lamp}?deleted=1")), || format!("link to the parent: {href}"))?;
    ui.axe("restore refused: parent deleted").await?;
    let (status, _) = ui.get(&format!("/v1/cart_items/{item}")).await;
    check(status == 404, || format!("the child stays deleted: {status}"))?;
    ui.click("#conflict a.conflict-link").await?;
    ui.until("document.querySelector('#deleted-banner')").await?;
    ui.click("#restore").await?;
    ui.until(&format!("location.hash === '#/c/products/{lamp}'")).await?;
    let (status, _) = ui.get(&format!("/v1/products/{lamp}")).await;
    check(status == 200, || format!("the parent restored from its page: {status}"))
}

async fn pauses_and_resumes_purge(ui: &Ui) -> Result {
    ui.open("/retention").await?;
    let state = ui.text("#purge-state").await?;
    check(state.contains("running"), || format!("purge state: {state:?}"))?;
    ui.click("#purge-toggle").await?;
    ui.until("document.querySelector('#purge-state') && document.querySelector('#purge-state').textContent.includes('paused')").await?;
    let (_, preview) = ui.get("/v1/purge/preview").await;
    check(preview["paused"] == true, || format!("paused through the page: {preview}"))?;
    let button = ui.text("#purge-toggle").await?;
    check(button == "Resume purge", || format!("the toggle: {button:?}"))?;
    ui.axe("retention, purge paused").await?;
    ui.click("#purge-toggle").await?;
    ui.until("document.querySelector('#purge-state') && document.querySelector('#purge-state').textContent.includes('running')").await?;
    let (_, preview) = ui.get("/v1/purge/preview").await;
    check(preview["paused"] == false, || format!("resumed through the page: {preview}"))
}

async fn shows_the_chain_verify_status(ui: &Ui, db: &Path) -> Result {
    // The server checked the chain by itself at start, and stored the outcome.
    let deadline = Instant::now() + PATIENCE;
    let started = loop {
        let (status, verify) = ui.get("/v1/audit/verify").await;
        check(status == 200, || format!("GET /v1/audit/verify: {status} {verify}"))?;
        if verify["status"] != "pending" || Instant::now() > deadline {
            break verify;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check(started["status"] == "intact" && started["checked_at"].is_string(), || {
        format!("the check at start: {started}")
    })?;
    ui.open("/audit").await?;
    ui.until("document.querySelector('#verify-status')").await?;
    ui.click("#verify-now").await?;
    ui.until("[...document.querySelectorAll('.toast')].some(t => /Checked: the chain is intact|checked seconds ago/.test(t.textContent))").await?;
    ui.until("document.querySelector('#verify-status[data-status=intact]')").await?;
    let said = ui.text("#verify-status").await?;
    check(said.starts_with("Intact:") && said.contains("Checked"), || format!("the verify status: {said:?}"))?;
    let (status, verify) = ui.get("/v1/audit/verify").await;
    check(status == 200 && verify["status"] == "intact" && verify["checked_at"].is_string(), || {
        format!("the stored check: {status} {verify}")
    })?;
    ui.axe("audit log with verify status").await?;
    ui.shot("audit").await?;

    // An entry of this tenant edited in the database behind the server's back: the next
    // check (once the last one is out of its reuse window) shows the chain broken there.
    let conn = rusqlite::Connection::open(db).ctx("open the demo database")?;
    let (seq, tenant, reason): (i64, String, Option<String>) = conn
        .query_row("select seq, tenant, reason from audit order by seq limit 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .ctx("the first entry")?;
    check(tenant == "demo", || format!("the first entry is the demo tenant's: {tenant}"))?;
    conn.execute("update audit set reason = 'edited' where seq = ?1", [seq]).ctx("edit the entry")?;
    let check_again = || async {
        let (_, last) = ui.get("/v1/audit/verify").await;
        let at = last["checked_at"].as_str().unwrap_or_default().to_string();
        // Wait out the reuse window of the last check (10 s), so Check now checks afresh.
        tokio::time::sleep(Duration::from_secs(11)).await;
        ui.click("#verify-now").await?;
        ui.until(&format!(
            "document.querySelector('#verify-status time') && document.querySelector('#verify-status time').getAttribute('datetime') !== {at:?}"
        ))
        .await
    };
    check_again().await?;
    let said = ui.text("#verify-status").await?;
    check(said.starts_with("Broken:") && said.contains(&format!("#{seq}")), || format!("the broken chain: {said:?}"))?;
    ui.axe("audit log, chain broken").await?;
    conn.execute("update audit set reason = ?1 where seq = ?2", rusqlite::params![reason, seq]).ctx("put it back")?;
    check_again().await?;
    ui.until("document.querySelector('#verify-status[data-status=intact]')").await
}

async fn every_other_page_passes_axe(ui: &Ui) -> Result {
    ui.open("/c/products").await?;
    ui.until("document.querySelector('#records tbody tr')").await?;
    ui.axe("browse").await?;
    ui.shot("browse").await?;
    ui.open("/retention").await?;
    ui.until("document.querySelector('#preview')").await?;
    ui.axe("retention").await?;
    ui.shot("retention").await?;
    ui.open("/audit").await?;
    ui.until("document.querySelector('#audit tbody tr')").await?;
    ui.axe("audit").await?;
    // A phone's width: nothing wider than the screen but the tables' own scroll boxes.
    ui.c.set_window_size(390, 844).await.ctx("resize")?;
    for route in ["/", "/c/products", "/trash"] {
        ui.open(route).await?;
        let wide =
            ui.js("return document.documentElement.scrollWidth > document.documentElement.clientWidth + 1;").await?;
        check(wide == json!(false), || format!("{route} is wider than a phone"))?;
    }
    ui.shot("phone").await?;
    ui.c.set_window_size(1100, 800).await.ctx("resize")
}

async fn an_auditor_reads_the_log_without_check_now(ui: &Ui, auditor: &str) -> Result {
    ui.sign_in(auditor).await?;
    ui.open("/audit").await?;
    ui.until("document.querySelector('#audit tbody tr')").await?;
    let said = ui.text("#verify-status").await?;
    check(said.contains("needs the admin scope"), || format!("the status without admin: {said:?}"))?;
    check(ui.js("return !document.querySelector('#verify-now');").await? == json!(true), || {
        "Check now is offered without admin".into()
    })?;
    ui.axe("audit log, audit key").await
}

async fn a_read_only_key_sees_no_delete_buttons(ui: &Ui, reader: &str) -> Result {
    ui.sign_in(reader).await?;
    let mug = ui.first_id("/v1/products?filter[sku]=SKU-1002").await;
    let nav = ui.text("#nav").await?;
    check(!nav.contains("Recently deleted") && !nav.contains("Retention"), || format!("nav of a read key: {nav:?}"))?;
    let row = ui.text("#collections tr[data-collection=products]").await?;
    check(row.contains('—'), || format!("counts of deleted records are hidden from a read key: {row:?}"))?;
    for route in [format!("/c/products/{mug}"), "/c/products".to_string()] {
        ui.open(&route).await?;
        ui.until("document.querySelector('#fields') || document.querySelector('#records')").await?;
        let destructive = ui
            .js("return [...document.querySelectorAll('button')].map(b => b.textContent).filter(t => /delete|restore|erase|purge|hold/i.test(t));")
            .await?;
        check(destructive == json!([]), || format!("{route} offers {destructive}"))?;
    }
    ui.open(&format!("/c/products/{mug}")).await?;
    let note = ui.text("#not-offered").await?;
    check(note.contains("needs the delete scope"), || format!("the missing scope is named: {note:?}"))?;
    ui.axe("record, read-only key").await
}

async fn another_tenant_sees_none_of_this_data(ui: &Ui, other: &str) -> Result {
    ui.sign_in(other).await?;
    let mug = ui.first_id("/v1/products?filter[sku]=SKU-1002").await;
    let counts =
        ui.js("return [...document.querySelectorAll('#collections td.num')].map(td => td.textContent);").await?;
    check(counts.as_array().is_some_and(|c| !c.is_empty() && c.iter().all(|n| n == "0")), || {
        format!("another tenant's counts: {counts}")
    })?;
    ui.open("/c/products").await?;
    let total = ui.text("#total").await?;
    check(total == "0 records", || format!("another tenant's products: {total:?}"))?;
    ui.open(&format!("/c/products/{mug}")).await?;
    let said = ui.text("main .error").await?;
    check(said.contains("not found") || said.contains("no "), || format!("a record of this tenant: {said:?}"))?;
    ui.open("/trash").await?;
    ui.text("#trash-empty").await?;
    ui.open("/c/products").await?;
    ui.click("#sign-out").await?;
    ui.until("document.querySelector('#signin')").await?;
    let stored = ui.js("return sessionStorage.getItem('tombstone.key');").await?;
    check(stored.is_null(), || "signing out forgets the key".into())
}

async fn a_page_of_fifty_renders_measured(ui: &Ui, other: &str) -> Result {
    // Fifty records of the other tenant, so the demo tenant's counts stay as they were.
    for i in 0..60 {
        let body = json!({"name": format!("Category {i:02}"), "slug": format!("cat-{i:02}")});
        let (status, _) = ui.api(reqwest::Method::POST, "/v1/categories", other, Some(body)).await;
        assert_eq!(status, 201);
    }
    ui.sign_in(other).await?;
    let mut samples = Vec::new();
    for _ in 0..5 {
        ui.open("/c/categories").await?;
        ui.c.refresh().await.ctx("reload")?;
        ui.until("document.querySelectorAll('#records tbody tr').length === 50").await?;
        let ms = ui.js("const m = performance.getEntriesByName('tombstone:render'); return m.length ? m[m.length - 1].duration : null;").await?;
        samples.push(ms.as_f64().ok_or("no tombstone:render measure")?);
    }
    // Past the first 50 with the cursor (60 records: 10 more), and back.
    let ids = "return [...document.querySelectorAll('#records tbody tr')].map(tr => tr.dataset.id);";
    let one = ui.js(ids).await?;
    ui.click("#next-page").await?;
    ui.until("document.querySelectorAll('#records tbody tr').length === 10").await?;
    let two = ui.js(ids).await?;
    let (one, two) = (one.as_array().cloned().unwrap_or_default(), two.as_array().cloned().unwrap_or_default());
    check(two.iter().all(|id| !one.contains(id)), || format!("page two repeats page one: {two:?}"))?;
    check(ui.js("return !document.querySelector('#next-page');").await? == json!(true), || {
        "no next page after the last".into()
    })?;
    ui.axe("browse, second page").await?;
    ui.c.find(Locator::LinkText("First page")).await.ctx("First page")?.click().await.ctx("First page")?;
    ui.until("document.querySelectorAll('#records tbody tr').length === 50 && !location.hash.includes('cursor')")
        .await?;
    samples.sort_by(f64::total_cmp);
    // Reported, not asserted (timings are not test outcomes): see docs/PERFORMANCE.md.
    eprintln!(
        "dashboard: a page of 50 records rendered in {:.1} ms (median of 5; min {:.1}, max {:.1})",
        samples[2], samples[0], samples[4]
    );
    Ok(())
}

/// The config of a second server whose children go with their parent in the background.
const EVENTUAL: &str = r#"
[storage]
url = "sqlite://data/tombstone.db"

[collections.parents.fields]
name = { type = "string" }

[collections.children.fields]
n         = { type = "integer" }
parent_id = { type = "ref", collection = "parents", on_delete = "eventual" }
"#;

/// An eventual cascade on the deletion operation page: still running while the cascade
/// worker cannot work (the test holds its lease, taken in the database before the server
/// started), then done once the lease is given back — the page refreshes itself.
struct EventualServer {
    server: Server,
    key: String,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the second server (outside the async runtime: its start-up waits block), its
/// database migrated first and the cascade worker's lease taken by the test.
fn eventual_server() -> EventualServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tombstone.toml");
    std::fs::write(&config, EVENTUAL).expect("write config");
    let config_arg = config.to_str().expect("config path");
    run_bounded(None, &["migrate", "--config", config_arg], PATIENCE).assert_success();
    let db = dir.path().join("data/tombstone.db");
    rusqlite::Connection::open(&db)
        .expect("open the database")
        .execute(
            "insert into leases (name, holder, expires_at) values ('eventual_cascades', 'browser-test', 4102444800000000)",
            [],
        )
        .expect("hold the cascade lease");
    let out = run_bounded(
        None,
        &["keys", "create", "--config", config_arg, "--tenant", "t1", "--scopes", "admin", "--json"],
        PATIENCE,
    );
    out.assert_success();
    let key: Value = serde_json::from_str(out.stdout.trim()).expect("keys create --json");
    let key = key["secret"].as_str().expect("secret").to_string();
    let server = Server::spawn(dir.path(), &["serve", "--config", config_arg, "--listen", "127.0.0.1:0"], None);
    EventualServer { server, key, db, _dir: dir }
}

async fn shows_an_eventual_cascade_in_progress(ui: &Ui, second: &EventualServer) -> Result {
    let db = rusqlite::Connection::open(&second.db).ctx("open the database")?;
    let key = second.key.clone();
    let ui = Ui {
        c: ui.c.clone(),
        base: second.server.base.clone(),
        http: reqwest::Client::new(),
        admin: key.clone(),
        shots: None,
        loads: 10_000.into(),
    };
    ui.create("parents", json!({"id": "p1", "name": "Old catalogue"})).await;
    for i in 0..30 {
        ui.create("children", json!({"n": i, "parent_id": "p1"})).await;
    }
    ui.sign_in(&key).await?;
    ui.open("/c/parents/p1").await?;
    ui.click("#delete").await?;
    let blast = ui.text("#blast").await?;
    check(blast.contains("30 more records will be deleted in the background"), || {
        format!("the eventual part: {blast:?}")
    })?;
    ui.click("#confirm-delete").await?;
    ui.until("document.querySelector('#deleted-banner')").await?;
    let (_, parent) = ui.get("/v1/parents/p1?include=deleted").await;
    let op = parent["deletion_id"].as_str().ok_or("no deletion id")?.to_string();
    ui.open(&format!("/deletions/{op}")).await?;
    let status = ui.text("#op-status").await?;
    let gone = ui.text("#gone").await?;
    check(status == "pending" && gone.contains("Still running"), || {
        format!("while the cascade waits: {status:?} {gone:?}")
    })?;
    ui.axe("deletion operation, eventual cascade running").await?;
    // Give the lease back: the server's worker takes it and finishes; the page, left alone,
    // refreshes itself until the operation is done.
    db.execute("update leases set expires_at = 0 where name = 'eventual_cascades'", []).ctx("release the lease")?;
    ui.until("document.querySelector('#op-status') && document.querySelector('#op-status').textContent === 'done'")
        .await?;
    let fields = ui.text("main dl.fields").await?;
    check(fields.contains("children: 30"), || format!("the operation's counts: {fields:?}"))?;
    let (_, children) = ui.get("/v1/children?count=true&limit=1").await;
    check(children["total"] == 0, || format!("every child went: {children}"))?;
    ui.axe("deletion operation, eventual cascade done").await
}

/// Runs one scenario; on failure saves a screenshot and names it in the panic.
async fn scenario<F: std::future::Future<Output = Result>>(ui: &Ui, name: &str, run: F) {
    if let Err(message) = run.await {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}.png"));
        let saved = match ui.c.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, png).map(|()| path.display().to_string()).unwrap_or_else(|e| e.to_string())
            }
            Err(e) => format!("no screenshot: {e}"),
        };
        panic!("dashboard scenario `{name}` failed: {message}\nscreenshot: {saved}");
    }
    eprintln!("dashboard scenario `{name}`: ok");
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let Some(driver) = start_driver() else { return };
    let ws = Workspace::new();
    let server = Server::spawn(&ws.cwd, &["serve", "--demo", "--listen", "127.0.0.1:0"], None);
    let stderr = server.stderr_text();
    let admin = stderr
        .lines()
        .find_map(|l| l.split_once("shown once): ").map(|(_, k)| k.trim().to_string()))
        .unwrap_or_else(|| panic!("no demo key printed:\n{stderr}"));
    assert!(stderr.contains(&format!("dashboard: {}/ui/", server.base)), "the dashboard URL is printed:\n{stderr}");
    let reader = keys(&ws.cwd, "demo", "read");
    let other = keys(&ws.cwd, "acme", "admin");
    let deleter = keys(&ws.cwd, "demo", "read,delete,read_deleted");
    let auditor = keys(&ws.cwd, "demo", "read,audit");
    let shots = std::env::var_os("TOMBSTONE_DASHBOARD_SHOTS").map(PathBuf::from);
    let second = eventual_server();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let c = browser(&driver).await;
        let ui = Ui { c, base: server.base.clone(), http: reqwest::Client::new(), admin, shots, loads: 0.into() };
        scenario(&ui, "sign_in", signs_in(&ui)).await;
        scenario(&ui, "delete_and_undo", deletes_with_blast_radius_then_undoes(&ui)).await;
        scenario(&ui, "recently_deleted_restore", finds_and_restores_in_recently_deleted(&ui)).await;
        scenario(&ui, "unique_conflict", explains_a_unique_conflict_with_a_link(&ui)).await;
        scenario(&ui, "hold_refuses_purge", a_hold_makes_purge_refuse(&ui)).await;
        scenario(&ui, "archive", archives_and_unarchives_in_the_archived_view(&ui)).await;
        scenario(&ui, "versions", compares_versions_and_reverts(&ui)).await;
        scenario(&ui, "erase", erases_after_typing_the_id(&ui)).await;
        scenario(&ui, "delete_from_browse", deletes_from_the_browse_table(&ui)).await;
        scenario(&ui, "trash_filters", filters_recently_deleted(&ui, &deleter)).await;
        scenario(&ui, "parent_deleted", names_the_deleted_parent_of_a_child(&ui)).await;
        scenario(&ui, "purge_pause", pauses_and_resumes_purge(&ui)).await;
        scenario(&ui, "audit_verify", shows_the_chain_verify_status(&ui, &ws.cwd.join("tombstone-data/tombstone.db")))
            .await;
        scenario(&ui, "other_pages", every_other_page_passes_axe(&ui)).await;
        scenario(&ui, "auditor_key", an_auditor_reads_the_log_without_check_now(&ui, &auditor)).await;
        scenario(&ui, "read_only_key", a_read_only_key_sees_no_delete_buttons(&ui, &reader)).await;
        scenario(&ui, "other_tenant", another_tenant_sees_none_of_this_data(&ui, &other)).await;
        scenario(&ui, "fifty_records", a_page_of_fifty_renders_measured(&ui, &other)).await;
        scenario(&ui, "eventual_cascade", shows_an_eventual_cascade_in_progress(&ui, &second)).await;
        let _ = ui.c.close().await;
    });
}

/// `tombstone keys create` in the demo's working directory: the secret.
fn keys(cwd: &Path, tenant: &str, scopes: &str) -> String {
    let out = run_bounded(Some(cwd), &["keys", "create", "--tenant", tenant, "--scopes", scopes, "--json"], PATIENCE);
    out.assert_success();
    let key: Value = serde_json::from_str(out.stdout.trim()).expect("keys create --json");
    key["secret"].as_str().expect("secret").to_string()
}
