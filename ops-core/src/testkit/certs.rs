//! Throwaway certificates for the TLS tests of both engines, made with the `openssl`
//! program (installed by `scripts/test`): a CA, a server certificate it signs for
//! `127.0.0.1` only (so that `localhost` is a wrong host name), a client certificate it
//! signs, and a second, unrelated CA (a wrong CA). Every file is PEM; keys are 0600.
//!
//! A missing `openssl` is a failure that says what to install, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of a throwaway PKI, all in one directory.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing the tests use.
    pub other_ca: PathBuf,
    /// The server certificate: subjectAltName `IP:127.0.0.1` and nothing else.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (CN `dbops-client`) signed by [`TestPki::ca`].
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// Makes a [`TestPki`] in `dir`.
///
/// # Panics
/// When `openssl` is missing or fails (this is test set-up).
pub fn make_test_pki(dir: &Path) -> TestPki {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the TLS tests make their certificates with the openssl program: apt-get install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "dbops test CA"), ("other-ca", "dbops unrelated CA")] {
        openssl(
            &[
                &["req", "-x509", "-days", "2", "-subj", &format!("/CN={cn}")][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            ]
            .concat(),
        );
    }
    let signed = |name: &str, cn: &str, ext: &str| {
        openssl(
            &[
                &["req", "-subj", &format!("/CN={cn}")][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write the extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    };
    signed(
        "server",
        "127.0.0.1",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    signed(
        "client",
        "dbops-client",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    for key in ["ca.key", "other-ca.key", "server.key", "client.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
            .expect("chmod 0600 a key");
    }
    TestPki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}
