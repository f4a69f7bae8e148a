//! Headless Chromium over WebDriver for the dashboard suites: a chromedriver on a free port,
//! a browser session that downloads into a directory of the test's, and ways to read the page.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A chromedriver process on a free port, killed on drop.
pub(crate) struct ChromeDriver {
    child: Child,
    port: u16,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver_path() -> PathBuf {
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.exists(),
        "chromedriver not found at {} -- install Debian's `chromium` and `chromium-driver` \
         (bash tests/run.sh does it with apt-get) or set CHROMEDRIVER",
        path.display()
    );
    path
}

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "chromium not found at {} -- install Debian's `chromium` (bash tests/run.sh does it) or set CHROMIUM",
        path.display()
    );
    path
}

pub(crate) async fn start_chromedriver() -> ChromeDriver {
    let path = chromedriver_path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    let driver = ChromeDriver { child, port };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(res) = http
            .get(format!("http://127.0.0.1:{port}/status"))
            .send()
            .await
        {
            if res.status() == 200 {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on port {port}");
}

/// A session whose downloads land in `downloads`.
pub(crate) async fn browser(driver: &ChromeDriver, downloads: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium_path(),
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,3000", "--no-first-run", "--disable-extensions"],
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
            },
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless chromium")
}

/// Find the element and act on it; find it again and retry when the page re-rendered it in
/// between (WebDriver's "stale element reference": the page rebuilds its tables and cards on
/// every load, and a load started before the polling was stopped can still land).
pub(crate) async fn on_element<T, F, Fut>(
    c: &Client,
    at: Locator<'_>,
    act: F,
) -> Result<T, CmdError>
where
    F: Fn(Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, CmdError>>,
{
    let mut tries = 0;
    loop {
        let found = c.find(at).await?;
        match act(found).await {
            Err(e) if e.is_stale_element_reference() && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => return done,
        }
    }
}

/// Click the element at `at` (found again if the page re-rendered it).
pub(crate) async fn click(c: &Client, at: Locator<'_>) -> Result<(), CmdError> {
    on_element(c, at, |e| async move { e.click().await }).await
}

/// Type `keys` into the element at `at` (found again if the page re-rendered it).
pub(crate) async fn type_into(c: &Client, at: Locator<'_>, keys: &str) -> Result<(), CmdError> {
    on_element(c, at, |e| async move { e.send_keys(keys).await }).await
}

/// The text of the element at `at` (found again if the page re-rendered it).
pub(crate) async fn text_of(c: &Client, at: Locator<'_>) -> Result<String, CmdError> {
    on_element(c, at, |e| async move { e.text().await }).await
}

/// Every displayed figure: `data-figure` name -> text.
pub(crate) async fn figures(c: &Client) -> BTreeMap<String, String> {
    let v = c
        .execute(
            "const out = {}; for (const e of document.querySelectorAll('[data-figure]')) out[e.dataset.figure] = e.textContent; return out;",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Wait until `js` (an expression) is truthy in the page (up to 30 s: CI machines are small
/// and busy).
pub(crate) async fn wait_js(c: &Client, js: &str) {
    for _ in 0..300 {
        let v = c
            .execute(&format!("return !!({js});"), vec![])
            .await
            .unwrap();
        if v == json!(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = c
        .execute("return document.body.innerText;", vec![])
        .await
        .unwrap();
    panic!("timed out waiting for `{js}`; page text:\n{}", body);
}

pub(crate) fn output_dir() -> PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Save a screenshot of the element with this id (scrolled into view) as `name` in the output
/// directory.
pub(crate) async fn shoot(
    c: &Client,
    id: &str,
    name: &str,
) -> Result<(), fantoccini::error::CmdError> {
    // Below the sticky header.
    c.execute(
        "const e = document.getElementById(arguments[0]); window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - 64);",
        vec![json!(id)],
    )
    .await?;
    let png = on_element(c, Locator::Id(id), |e| async move { e.screenshot().await }).await?;
    std::fs::write(output_dir().join(name), png).unwrap();
    Ok(())
}

/// The whole visible page as `name` in the output directory.
pub(crate) async fn shoot_page(c: &Client, name: &str) -> Result<(), fantoccini::error::CmdError> {
    std::fs::write(output_dir().join(name), c.screenshot().await?).unwrap();
    Ok(())
}

/// A figure's text: the element `[data-figure=name]`.
pub(crate) fn figure(shown: &BTreeMap<String, String>, name: &str) -> String {
    shown
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("figure {name} not shown; shown: {shown:?}"))
}

/// Wait for a file in `dir` whose name ends with `suffix` (a finished download) and read it.
pub(crate) async fn downloaded(dir: &Path, suffix: &str) -> (String, String) {
    for _ in 0..300 {
        if let Some(entry) = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(suffix))
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            return (name, std::fs::read_to_string(entry.path()).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no download ending {suffix} in {}", dir.display());
}
