//! Development certificates: a CA and every certificate a local setup needs,
//! shaped like the real ones (the serving certificate has the subject and
//! SANs the apiserver checks; the apiserver's client certificate has kubeadm's
//! subject). Never for production: keys are made on this machine and the CA
//! key sits next to them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;
use time::OffsetDateTime;

#[derive(Debug, Error)]
pub enum CertsError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid SAN {0:?}: {1}")]
    San(String, String),
    #[error(
        "a subject can hold one organization here, got {0} (rcgen keeps one value per attribute type)"
    )]
    Organizations(usize),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// The subject, names and lifetime of a certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub usages: Vec<Usage>,
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// Valid from an hour ago (clock skew) for a year.
    pub fn new(common_name: &str, organizations: &[&str], usage: Usage) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: common_name.into(),
            organizations: organizations.iter().map(|o| o.to_string()).collect(),
            usages: vec![usage],
            ips: Vec::new(),
            dns_names: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(365 * 24 * 3600),
        }
    }

    pub fn params(&self) -> Result<CertificateParams, CertsError> {
        if self.organizations.len() > 1 {
            return Err(CertsError::Organizations(self.organizations.len()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            DnValue::Utf8String(self.common_name.clone()),
        );
        for o in &self.organizations {
            dn.push(DnType::OrganizationName, DnValue::Utf8String(o.clone()));
        }
        params.distinguished_name = dn;
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = self
            .usages
            .iter()
            .map(|u| match u {
                Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
                Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        params.subject_alt_names = self.ips.iter().map(|ip| SanType::IpAddress(*ip)).collect();
        for name in &self.dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| CertsError::San(name.clone(), e.to_string()))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A PEM certificate and its PEM key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can issue leaves.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl Authority {
    pub fn new(common_name: &str) -> Result<Self, CertsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, DnValue::Utf8String(common_name.into()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An authority from an existing CA certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Authority {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, CertsError> {
        self.issue_params(&spec.params()?)
    }

    /// Issues from raw parameters, for certificates no [`LeafSpec`] describes.
    pub fn issue_params(&self, params: &CertificateParams) -> Result<Issued, CertsError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Signs a PEM certificate signing request as a kubelet serving certificate
/// (server auth, the request's subject and SANs) valid for `lifetime` —
/// what the `kubernetes.io/kubelet-serving` signer would issue.
pub fn sign_serving_request(
    authority: &Authority,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<String, CertsError> {
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
    let now = OffsetDateTime::now_utc();
    request.params.not_before = now - Duration::from_secs(60);
    request.params.not_after = now + lifetime;
    request.params.is_ca = IsCa::ExplicitNoCa;
    request.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    request.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    request.params.use_authority_key_identifier_extension = true;
    Ok(request.signed_by(&authority.issuer)?.pem())
}

/// What `kubelet-guard certs dev` makes.
#[derive(Debug, Clone)]
pub struct DevCertsRequest {
    pub node_name: String,
    pub ips: Vec<IpAddr>,
    pub dns_names: Vec<String>,
}

/// The identities `certs dev` issues client certificates for.
pub const APISERVER_USER: &str = "kube-apiserver-kubelet-client";
pub const APISERVER_GROUP: &str = "system:masters";
pub const MONITORING_USER: &str = "monitoring";
pub const MONITORING_GROUP: &str = "system:monitoring";
pub const GATEWAY_USER: &str = "kubelet-guard";

/// Writes the development CA and certificates into `out` (created if
/// needed). Keys are written readable by the owner only.
pub fn write_dev_certs(out: &Path, request: &DevCertsRequest) -> Result<(), CertsError> {
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.to_owned(),
        source,
    })?;
    let ca = Authority::new("kubelet-guard development CA")?;
    write_file(&out.join("ca.crt"), ca.cert_pem(), false)?;
    write_file(&out.join("ca.key"), ca.key_pem(), true)?;

    let mut serving = LeafSpec::new(
        &format!("system:node:{}", request.node_name),
        &["system:nodes"],
        Usage::Server,
    );
    serving.ips = request.ips.clone();
    serving.dns_names = request.dns_names.clone();
    write_pair(out, "serving", &ca.issue(&serving)?)?;

    let mut kubelet = LeafSpec::new(
        &format!("{}-kubelet", request.node_name),
        &[],
        Usage::Server,
    );
    kubelet.ips = vec![IpAddr::from([127, 0, 0, 1])];
    kubelet.dns_names = vec!["localhost".into()];
    write_pair(out, "kubelet", &ca.issue(&kubelet)?)?;

    let clients = [
        ("apiserver-client", APISERVER_USER, &[APISERVER_GROUP][..]),
        ("monitoring", MONITORING_USER, &[MONITORING_GROUP][..]),
        ("gateway-client", GATEWAY_USER, &[][..]),
    ];
    for (name, user, groups) in clients {
        write_pair(
            out,
            name,
            &ca.issue(&LeafSpec::new(user, groups, Usage::Client))?,
        )?;
    }

    // Same subject as the apiserver's certificate, different CA: an impostor.
    let untrusted = Authority::new("untrusted CA")?;
    write_file(&out.join("untrusted-ca.crt"), untrusted.cert_pem(), false)?;
    let impostor = untrusted.issue(&LeafSpec::new(
        APISERVER_USER,
        &[APISERVER_GROUP],
        Usage::Client,
    ))?;
    write_pair(out, "untrusted-client", &impostor)?;
    Ok(())
}

fn write_pair(out: &Path, name: &str, issued: &Issued) -> Result<(), CertsError> {
    write_file(&out.join(format!("{name}.crt")), &issued.cert_pem, false)?;
    write_file(&out.join(format!("{name}.key")), &issued.key_pem, true)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| CertsError::Write {
            path: path.to_owned(),
            source,
        })
}
