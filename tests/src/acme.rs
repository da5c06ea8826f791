//! A real ACME server for the tests: Debian's `pebble` on loopback, its HTTPS API under a test CA
//! made here (trusted only by what the test hands it to), resolving every name through its
//! companion `pebble-challtestsrv` (a DNS server answering 127.0.0.1 unless told otherwise), so
//! that HTTP-01 validation reaches the edge under test on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::edge::{free_port, signed_cert, EdgeNode};
use crate::wait_for;

/// A pebble and its DNS, killed on drop.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    dir: tempfile::TempDir,
    /// The ACME API's port (HTTPS).
    pub port: u16,
    /// Pebble's management API (HTTPS): the root that signs what it issues.
    pub management: u16,
    /// pebble-challtestsrv's management API (plain HTTP): DNS records.
    dns_management: u16,
    /// PEM of the CA of pebble's own HTTPS certificate.
    pub api_ca: String,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` (the edge's plain HTTP port), issuing
    /// certificates valid for `validity` (pebble's default: 5 years).
    pub fn start(http_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let (api_ca, chain, key) = signed_cert(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("api.pem"), &chain).unwrap();
        std::fs::write(dir.path().join("api.key"), &key).unwrap();
        let (port, management, dns_port, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = validity {
            config["certificateValidityPeriod"] = v.as_secs().into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(
            &config_path,
            serde_json::json!({ "pebble": config }).to_string(),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns_log = log("challtestsrv.log");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone().unwrap())
            .stderr(dns_log)
            .spawn()
            .expect(
                "pebble-challtestsrv (Debian package pebble; scripts/test-deps.sh installs it)",
            );
        let pebble_log = log("pebble.log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random sleeps before validating; every nonce accepted (pebble rejects 5% by
            // default to exercise clients' retries, which makes timings meaningless); every order
            // validated afresh, so that each issuance is an issuance.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(pebble_log.try_clone().unwrap())
            .stderr(pebble_log)
            .spawn()
            .expect("pebble (Debian package pebble; scripts/test-deps.sh installs it)");
        let p = Pebble {
            pebble,
            dns,
            dir,
            port,
            management,
            dns_management,
            api_ca,
        };
        wait_for(
            "pebble and its DNS to listen",
            Duration::from_secs(20),
            || {
                [port, management, dns_management]
                    .iter()
                    .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                    .then_some(())
            },
        );
        p
    }

    /// The directory URL an ACME client starts from.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Writes the API's CA to a file and returns its path (for curl).
    fn api_ca_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("api-ca.pem");
        std::fs::write(&path, &self.api_ca).unwrap();
        path
    }

    /// PEM of the root that signs the certificates pebble issues (made anew at each start).
    pub fn issuing_root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(self.api_ca_file())
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(out.status.success(), "pebble's root: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// How many certificates pebble has issued (its log says each).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Makes the DNS answer `ip` for `host` (instead of 127.0.0.1).
    pub fn dns_a(&self, host: &str, ip: &str) {
        let body = serde_json::json!({"host": format!("{host}."), "addresses": [ip]}).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.dns_management)).unwrap();
        write!(
            s,
            "POST /add-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "challtestsrv: {answer}");
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Points the cluster's ACME settings (`cluster/edge`) at `pebble`, its API's CA trusted.
pub fn use_acme(edge: &EdgeNode, pebble: &Pebble) {
    use redis::Commands;
    let _: () = edge
        .redis
        .conn()
        .hset_multiple(
            "cluster/edge",
            &[
                ("acme_directory", pebble.directory()),
                ("acme_email", "admin@example.org".to_string()),
                ("acme_ca", pebble.api_ca.clone()),
            ],
        )
        .unwrap();
}

/// `curl --resolve NAME:PORT:IP --cacert CA https://NAME:PORT/PATH`: the body on success, else
/// curl's error (for a `wait_for`).
pub fn https_get(
    ca_pem: &str,
    host: &str,
    ip: &str,
    port: u16,
    path: &str,
) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("{host}:{port}:{ip}")])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
