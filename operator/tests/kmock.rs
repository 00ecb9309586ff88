//! The real `mip-operator` binary against the **kmock KubernetesEmulator** (tests/kmock/emulator.py), an
//! in-memory HTTP stand-in for kube-apiserver, over loopback HTTP. It is NOT a Kubernetes API server: no
//! validation, admission, garbage collection, controllers or field ownership (the emulator's docstring lists what
//! it fakes and how). What this test shows is the wiring a unit test cannot: kubeconfig loading, discovery-free
//! typed clients, the watches and owner mapping of both controllers, the leader Lease, server-side apply over
//! HTTP, status subresources, the finalizer on deletion, graceful SIGTERM; all driven by `kubectl create -f` as
//! a user would.
//!
//! Needs the tools of `scripts/k8s-tools.sh` (`${MIP_TOOLS_DIR:-/opt/mip-tools}`: `venv/` with kmock, `bin/kubectl`);
//! without them the test FAILS, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const NS: &str = "mip";
const LEASE_NS: &str = "mip-system";
const IDENTITY: &str = "mip-operator-kmock-test";
/// How long the operator may take to reach a state.
const PATIENCE: Duration = Duration::from_secs(30);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Tools {
    python: PathBuf,
    kubectl: PathBuf,
}

fn tools() -> Tools {
    let dir = std::env::var_os("MIP_TOOLS_DIR").map_or_else(|| PathBuf::from("/opt/mip-tools"), PathBuf::from);
    let tools = Tools {
        python: dir.join("venv/bin/python"),
        kubectl: dir.join("bin/kubectl"),
    };
    let hint = "run scripts/k8s-tools.sh (it installs kmock and kubectl into ${MIP_TOOLS_DIR:-/opt/mip-tools})";
    assert!(
        tools.kubectl.is_file(),
        "{} is missing: {hint}",
        tools.kubectl.display()
    );
    assert!(tools.python.is_file(), "{} is missing: {hint}", tools.python.display());
    let probe = Command::new(&tools.python)
        .args(["-c", "import kmock, jsonpatch, yaml"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; {hint}", tools.python.display()));
    assert!(
        probe.status.success(),
        "the venv lacks kmock/jsonpatch/PyYAML ({}): {hint}",
        String::from_utf8_lossy(&probe.stderr)
    );
    tools
}

/// A child process killed (SIGKILL) and reaped when dropped, unless it already exited.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the {} log ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts the emulator on a free loopback port with the CRDs registered; returns it and its URL.
fn start_emulator(t: &Tools, dir: &Path, crds: &Path) -> (Proc, String) {
    let log = dir.join("emulator.log");
    let mut child = Command::new(&t.python)
        .arg(manifest_dir().join("tests/kmock/emulator.py"))
        .args(["--port", "0", "--crd"])
        .arg(crds)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting the emulator");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc {
        child,
        name: "emulator",
        log,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {} // keep the pipe drained
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("the emulator did not start: {}", proc.log()));
    let url = line
        .strip_prefix("kmock emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected emulator output: {line}"))
        .trim()
        .to_string();
    (proc, url)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Cluster {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn create(&self, file: &Path) {
        let file = file.to_str().unwrap();
        self.kubectl(&["create", "--validate=false", "-f", file])
            .unwrap_or_else(|e| panic!("kubectl create -f {file}: {e}"));
    }

    fn get(&self, kind: &str, name: &str, ns: &str) -> Result<Value, String> {
        let out = self.kubectl(&["get", kind, name, "-n", ns, "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// Polls `kind/name` until `ok` holds for it; returns it.
    fn wait_for(&self, kind: &str, name: &str, ns: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = Err(String::new());
        while start.elapsed() < PATIENCE {
            last = self.get(kind, name, ns);
            if let Ok(v) = &last
                && ok(v)
            {
                return v.clone();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{kind}/{name}: {what} not reached in {PATIENCE:?}; last: {last:?}");
    }
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)
}

/// `GET http://addr/path` (HTTP/1.0): status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((code, body))
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn operator_binary_against_kmock_emulator_creates_children_and_status() {
    let t = tools();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The CRDs as crdgen generates them: the emulator registers their plurals, kinds and subresources.
    let crds = d.join("crds.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_crdgen")).output().expect("crdgen");
    assert!(out.status.success(), "crdgen: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&crds, &out.stdout).unwrap();

    let (_emulator, url) = start_emulator(&t, d, &crds);
    let kubeconfig = d.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: kmock, cluster: {{server: \"{url}\"}}}}]\n\
             users: [{{name: anonymous, user: {{}}}}]\n\
             contexts: [{{name: kmock, context: {{cluster: kmock, user: anonymous, namespace: {NS}}}}}]\n\
             current-context: kmock\n"
        ),
    )
    .unwrap();
    let k = Cluster {
        kubectl: t.kubectl.clone(),
        kubeconfig: kubeconfig.clone(),
    };

    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = d.join("operator.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut operator = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_mip-operator"))
            .args(["--proxy-image", "registry.example/mip-proxy:test"])
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--lease-name", "mip-operator-leader", "--log-format", "json"])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", IDENTITY)
            .env("POD_NAMESPACE", LEASE_NS)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("starting mip-operator"),
        name: "mip-operator",
        log,
    };

    // The user's objects: the HomeAgent's Secret (stringData from the keys fixture), the HomeAgent, the MipProxy
    // (3 replicas: a Deployment).
    let keys = std::fs::read_to_string(manifest_dir().join("tests/fixtures/keys-sample.yaml")).unwrap();
    let secret = d.join("secret.json");
    let secret_doc = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "home-agent-keys", "namespace": NS},
        "stringData": {"keys.yaml": keys},
    });
    std::fs::write(&secret, secret_doc.to_string()).unwrap();
    k.create(&secret);
    k.create(&manifest_dir().join("tests/fixtures/homeagent-sample.yaml"));
    k.create(&manifest_dir().join("tests/fixtures/mipproxy-sample.yaml"));

    // The HomeAgent controller: Ready with the SA count; the MipProxy controller: usedBy.
    let ha = k.wait_for("homeagent", "ha1", NS, "Ready with usedBy", |h| {
        condition(h, "Ready").is_some_and(|c| c["status"] == "True") && h["status"]["usedBy"] == json!(["dmz"])
    });
    assert_eq!(ha["status"]["securityAssociations"], 3, "{ha}");
    assert_eq!(condition(&ha, "Ready").unwrap()["reason"], "SecretValid");
    assert_eq!(ha["status"]["observedGeneration"], 1);

    // The MipProxy: finalizer, status with observedGeneration and the four conditions.
    let proxy = k.wait_for("mipproxy", "dmz", NS, "status for generation 1", |p| {
        p["status"]["observedGeneration"] == 1 && condition(p, "Replicating").is_some()
    });
    let uid = proxy["metadata"]["uid"]
        .as_str()
        .expect("the emulator assigns uids")
        .to_string();
    assert_eq!(
        proxy["metadata"]["finalizers"],
        json!(["mipproxy.io/home-agent-status"])
    );
    let st = &proxy["status"];
    assert_eq!(st["homeAgents"], json!(["ha1"]));
    assert_eq!(
        (st["replicas"].clone(), st["readyReplicas"].clone()),
        (json!(3), json!(0))
    );
    // No pods ever run here (no kubelet): the rollout stays in progress, nothing is degraded.
    assert_eq!(condition(&proxy, "Progressing").unwrap()["status"], "True");
    assert_eq!(condition(&proxy, "Ready").unwrap()["status"], "False");
    assert_eq!(condition(&proxy, "Degraded").unwrap()["status"], "False");

    // Every child, owned by the MipProxy.
    for (kind, name) in [
        ("configmap", "dmz-config"),
        ("secret", "dmz-keys"),
        ("deployment", "dmz"),
        ("service", "dmz-peers"),
        ("serviceaccount", "dmz"),
        ("poddisruptionbudget", "dmz"),
    ] {
        let child = k.get(kind, name, NS).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("MipProxy"), Some("dmz")),
            "{kind}/{name}"
        );
        assert_eq!(owner["uid"], uid.as_str(), "{kind}/{name}");
        assert_eq!(owner["controller"], true, "{kind}/{name}");
    }
    let deployment = k.get("deployment", "dmz", NS).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let keys_secret = k.get("secret", "dmz-keys", NS).unwrap();
    assert!(keys_secret["data"]["keys.yaml"].is_string());
    assert!(k.get("daemonset", "dmz", NS).is_err(), "no DaemonSet with replicas set");

    // The leader Lease and the operator's own endpoints.
    let lease = k.get("lease", "mip-operator-leader", LEASE_NS).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], IDENTITY);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    let (code, _) = http_get(metrics_addr, "/readyz").expect("/readyz");
    assert_eq!(code, 200);
    let (code, text) = http_get(metrics_addr, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "mip_operator_leader"), Some(1.0), "{text}");
    assert!(metric(&text, "mip_operator_reconciles_total{controller=\"mipproxy\"}").unwrap() >= 1.0);
    assert!(metric(&text, "mip_operator_reconciles_total{controller=\"homeagent\"}").unwrap() >= 1.0);

    // A spec change: a new generation is applied (the watch on the MipProxy, the emulator bumps generation).
    k.kubectl(&[
        "patch",
        "mipproxy",
        "dmz",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ])
    .expect("kubectl patch");
    k.wait_for("mipproxy", "dmz", NS, "status for generation 2", |p| {
        p["status"]["observedGeneration"] == 2 && p["status"]["replicas"] == 2
    });
    assert_eq!(k.get("deployment", "dmz", NS).unwrap()["spec"]["replicas"], 2);

    // A Secret the HomeAgent names that does not parse: SecretInvalid, without the Secret's contents.
    let bad = r#"{"stringData":{"keys.yaml":"security_associations:\n  - home_address: 10.10.1.50\n    spi: 256\n    key: zz5ecret\n"}}"#;
    k.kubectl(&[
        "patch",
        "secret",
        "home-agent-keys",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        bad,
    ])
    .expect("kubectl patch");
    let ha = k.wait_for("homeagent", "ha1", NS, "SecretInvalid", |h| {
        condition(h, "Degraded").is_some_and(|c| c["reason"] == "SecretInvalid")
    });
    assert!(!ha.to_string().contains("zz5ecret"), "key material in the status: {ha}");
    assert!(ha["status"]["securityAssociations"].is_null());
    let proxy = k.wait_for("mipproxy", "dmz", NS, "Degraded SecretInvalid", |p| {
        condition(p, "Degraded").is_some_and(|c| c["reason"] == "SecretInvalid")
    });
    assert!(!proxy.to_string().contains("zz5ecret"));
    // Repaired: both recover.
    let good = json!({"stringData": {"keys.yaml": keys}}).to_string();
    k.kubectl(&[
        "patch",
        "secret",
        "home-agent-keys",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        &good,
    ])
    .expect("kubectl patch");
    k.wait_for("mipproxy", "dmz", NS, "not degraded", |p| {
        condition(p, "Degraded").is_some_and(|c| c["status"] == "False")
    });

    // Deletion: the finalizer's cleanup empties usedBy, then the object goes.
    k.kubectl(&["delete", "mipproxy", "dmz", "-n", NS, "--wait=false"])
        .expect("kubectl delete");
    let start = Instant::now();
    while k.get("mipproxy", "dmz", NS).is_ok() {
        assert!(
            start.elapsed() < PATIENCE,
            "the MipProxy was not released by its finalizer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ha = k.get("homeagent", "ha1", NS).unwrap();
    assert!(ha["status"]["usedBy"].as_array().is_none_or(Vec::is_empty), "{ha}");

    // SIGTERM: a clean exit that releases the Lease.
    let status = Command::new("kill")
        .args(["-TERM", &operator.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = operator
        .wait_exit(PATIENCE)
        .expect("mip-operator did not exit after SIGTERM");
    assert!(exit.success(), "exit status {exit}");
    let lease = k.get("lease", "mip-operator-leader", LEASE_NS).unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "the lease was not released: {lease}"
    );
    let log = operator.log();
    assert!(
        !log.contains("zz5ecret") && !log.contains("5ca1ab1e"),
        "key material in the log"
    );
    assert!(!log.contains("\"level\":\"ERROR\""), "errors in the log:\n{log}");
}
