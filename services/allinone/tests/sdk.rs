//! The TypeScript SDK (`sdk/typescript`) against a real stack: its unit
//! tests (`npm test`, which also compiles the example chat page), then
//! `test/browser/two-pages.mjs`, which drives two Chromium pages of the
//! example through an origin of its own that forwards `/api/*` and
//! `/gateway/ws` to this stack.
//!
//! Needs `node`, `npm` and `/usr/bin/chromium` (`.ci/sdk-setup` installs
//! Chromium and the SDK's dev dependencies). Without them the test prints
//! `SKIPPED` and passes, unless `FILAMENT_REQUIRE_SDK_TESTS=1`, which makes
//! it fail instead. A missing `node_modules` is installed with `npm ci`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use support::{Backends, TestStack};
use tokio::process::Command;

const CHROMIUM: &str = "/usr/bin/chromium";
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(600);
const UNIT_TESTS_TIMEOUT: Duration = Duration::from_secs(300);
const BROWSER_TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Owner and member log in to two pages, a message crosses from one to the
/// other, the owner kicks the member, and the guild's channel leaves the
/// member's page (the script's header has the details).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_unit_tests_and_the_example_in_two_browser_pages() {
    let Some(tools) = Tools::find() else {
        return;
    };
    let sdk = sdk_dir();
    if !sdk
        .join("node_modules/playwright-core/package.json")
        .is_file()
        || !sdk.join("node_modules/typescript/package.json").is_file()
    {
        run(
            "npm ci",
            Command::new(&tools.npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&sdk),
            NPM_CI_TIMEOUT,
        )
        .await;
    }

    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("the embedded stack starts");
    let origin = format!("http://{}", t.stack.public_addr);

    run(
        "npm test (the SDK's unit tests)",
        Command::new(&tools.npm).arg("test").current_dir(&sdk),
        UNIT_TESTS_TIMEOUT,
    )
    .await;
    run(
        "two-pages.mjs (the example in Chromium)",
        Command::new(&tools.node)
            .args(["test/browser/two-pages.mjs", "--origin", &origin])
            .args(["--chromium", CHROMIUM])
            .current_dir(&sdk),
        BROWSER_TEST_TIMEOUT,
    )
    .await;
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/typescript")
}

/// The programs the test runs.
struct Tools {
    node: PathBuf,
    npm: PathBuf,
}

impl Tools {
    /// `None` (after saying so) when something is missing and the SDK tests
    /// are not required; panics when they are.
    fn find() -> Option<Self> {
        let node = on_path("node");
        let npm = on_path("npm");
        let chromium = Path::new(CHROMIUM)
            .is_file()
            .then(|| PathBuf::from(CHROMIUM));
        let missing: Vec<&str> = [("node", &node), ("npm", &npm), (CHROMIUM, &chromium)]
            .into_iter()
            .filter(|(_, found)| found.is_none())
            .map(|(name, _)| name)
            .collect();
        match (node, npm, missing.is_empty()) {
            (Some(node), Some(npm), true) => Some(Self { node, npm }),
            _ => {
                let what = missing.join(", ");
                assert!(
                    std::env::var("FILAMENT_REQUIRE_SDK_TESTS").as_deref() != Ok("1"),
                    "FILAMENT_REQUIRE_SDK_TESTS=1, but this is missing: {what} (run .ci/sdk-setup)"
                );
                eprintln!(
                    "\n*** SKIPPED: not found: {what}; the TypeScript SDK's unit tests and \
                     its browser test were NOT run (run .ci/sdk-setup, or set \
                     FILAMENT_REQUIRE_SDK_TESTS=1 to make this a failure) ***\n"
                );
                None
            }
        }
    }
}

/// The first executable file named `name` in a `PATH` directory.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `command` to completion within `timeout`, in a process group of its
/// own (npm starts node, which starts Chromium: a timeout kills them all);
/// panics with everything it printed unless it exits 0.
async fn run(what: &str, command: &mut Command, timeout: Duration) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
        .env("NPM_CONFIG_FUND", "false")
        .env("NPM_CONFIG_AUDIT", "false")
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command
        .spawn()
        .unwrap_or_else(|err| panic!("{what}: cannot start: {err}"));
    let pid = child.id();
    let output: Output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|err| panic!("{what}: waiting failed: {err}")),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            panic!("{what}: still running after {timeout:?}; killed");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}) after {:.1?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        output.status,
        started.elapsed(),
    );
    eprintln!("{what}: ok in {:.1?}", started.elapsed());
    if std::env::var_os("FILAMENT_SDK_TEST_VERBOSE").is_some() {
        eprintln!("--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    }
}

/// Kills the process group `pgid` (the child and whatever it started).
fn kill_group(pgid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("could not kill process group {pgid}: {status:?}");
    }
}
