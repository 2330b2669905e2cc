//! Development certificates for a test, written into a temp dir (the same
//! set `kubelet-guard certs dev` writes), certificates issued on demand from
//! its CA — by rcgen or by the real `openssl` — and the identities test
//! clients present.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use kubelet_guard::certs::{self, Authority, DevCertsRequest, Issued, LeafSpec};

pub const NODE: &str = "test-node";

/// Development certificates, written once per test into a temp dir.
pub struct Certs {
    dir: TempDir,
}

impl Default for Certs {
    fn default() -> Self {
        Certs::new()
    }
}

impl Certs {
    /// A fresh set in a new temp dir (removed when dropped). Panics if it
    /// cannot be written: this is test setup.
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        certs::write_dev_certs(
            dir.path(),
            &DevCertsRequest {
                node_name: NODE.into(),
                ips: vec!["127.0.0.1".parse().unwrap()],
                dns_names: vec!["localhost".into()],
            },
        )
        .expect("dev certs");
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The development CA, to issue certificates the dev set lacks.
    pub fn authority(&self) -> Authority {
        let read = |n| std::fs::read_to_string(self.path(n)).unwrap();
        Authority::from_pem(&read("ca.crt"), &read("ca.key")).unwrap()
    }

    /// Issues `spec` from the dev CA and writes it as `<name>.crt/.key`.
    pub fn issue(&self, name: &str, spec: &LeafSpec) -> Identity {
        let issued = self.authority().issue(spec).unwrap();
        self.write_identity(name, &issued)
    }

    /// Issues a client certificate from the dev CA with the real `openssl`,
    /// for subjects rcgen cannot write (several O values, odd string types).
    /// `subject` is openssl's `-subj` form: `/CN=alice/O=team-a/O=team-b`.
    pub fn issue_with_openssl(&self, name: &str, subject: &str, extra_args: &[&str]) -> Identity {
        let key = self.path(&format!("{name}.key"));
        let csr = self.path(&format!("{name}.csr"));
        let crt = self.path(&format!("{name}.crt"));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
        )
        .unwrap();
        let (key_s, csr_s, crt_s, ext_s) = (
            key.to_str().unwrap(),
            csr.to_str().unwrap(),
            crt.to_str().unwrap(),
            ext.to_str().unwrap(),
        );
        let mut req = vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key_s,
            "-out",
            csr_s,
            "-subj",
            subject,
        ];
        req.extend_from_slice(extra_args);
        let out = run_tool("openssl", &req);
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ca = self.path("ca.crt");
        let ca_key = self.path("ca.key");
        let out = run_tool(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                csr_s,
                "-CA",
                ca.to_str().unwrap(),
                "-CAkey",
                ca_key.to_str().unwrap(),
                "-days",
                "2",
                "-out",
                crt_s,
                "-extfile",
                ext_s,
            ],
        );
        assert!(
            out.status.success(),
            "openssl x509: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Identity::Named(name.to_owned())
    }

    pub fn write_identity(&self, name: &str, issued: &Issued) -> Identity {
        std::fs::write(self.path(&format!("{name}.crt")), &issued.cert_pem).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), &issued.key_pem).unwrap();
        Identity::Named(name.to_owned())
    }
}

/// Who a test client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No client certificate.
    Nobody,
    /// `<name>.crt` / `<name>.key` in the cert dir.
    Named(String),
}

pub fn apiserver() -> Identity {
    Identity::Named("apiserver-client".into())
}

pub fn monitoring() -> Identity {
    Identity::Named("monitoring".into())
}

/// Runs a real command-line tool; fails the test with a clear message when
/// it is missing (`tests/run` installs curl, openssl and promtool).
pub fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}): run the tests with tests/run, which installs it")
        })
}
