//! Throw-away certificate authorities and leaf certificates for TLS tests (rcgen).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA that can sign server and client certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign ca");
        TestCa { issuer }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str, sans: &[&str], eku: &[ExtendedKeyUsagePurpose]) -> Pem {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<String>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = eku.to_vec();
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Pem { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> Pem {
        self.leaf("localhost", &["localhost", "127.0.0.1"], &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A certificate for `localhost` and `127.0.0.1` good for both ends, as Envoy Gateway's
    /// certgen issues one `tls.crt` that its components serve and present as clients.
    pub fn server_and_client_cert(&self) -> Pem {
        self.leaf(
            "localhost",
            &["localhost", "127.0.0.1"],
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// A client certificate.
    pub fn client_cert(&self, cn: &str) -> Pem {
        self.leaf(cn, &[cn], &[ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// Write `pem` as `<dir>/<stem>.crt` and `<dir>/<stem>.key` atomically (rename from a temporary
/// name in the same directory).
pub fn write_pem(dir: &Path, stem: &str, pem: &Pem) {
    for (ext, text) in [("crt", &pem.cert), ("key", &pem.key)] {
        let tmp = dir.join(format!(".{stem}.{ext}.{}", crate::unique("tmp")));
        std::fs::write(&tmp, text).expect("write pem");
        std::fs::rename(&tmp, dir.join(format!("{stem}.{ext}"))).expect("rename pem");
    }
}

/// A TLS channel to `addr` that trusts `ca_pem`, verifies the name `localhost`, and presents
/// `identity` when given. Connects eagerly (bounded by 5 s), so handshake failures surface here
/// or on the first call.
pub async fn tls_channel(addr: SocketAddr, ca_pem: &str, identity: Option<&Pem>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    let ep = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| format!("tls_config: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    match tokio::time::timeout(Duration::from_secs(8), ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(format!("connect: {e} ({:?})", std::error::Error::source(&e))),
        Err(_) => Err("connect: timed out".to_string()),
    }
}
