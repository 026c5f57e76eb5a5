//! RFC 8705 §2.1 (`tls_client_auth`, PKI method): what a client certificate
//! says about its holder, and whether that is what a client's configuration
//! expects. The chain was verified before it gets here: by the HTTP
//! listener's TLS handshake (`listen.http_tls.client_ca`) or by the proxy
//! that forwarded it in `x-forwarded-client-cert`; this module only reads
//! names.
//!
//! Matching: `tls_client_auth_subject_dn` against the certificate's subject
//! RDN by RDN, attribute by attribute (type by OID; string values with case
//! and runs of blanks ignored, as X.520 caseIgnoreMatch roughly does; other
//! values byte for byte); `tls_client_auth_san_uri` equal to one URI SAN;
//! `tls_client_auth_san_dns` equal to one DNS SAN, case ignored, no wildcards.

use std::str::FromStr;

use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::Name;

use crate::config::Client;

/// A distinguished name in comparable form: RDNs in DER order, each a
/// sorted set of (OID, normalized value).
type Dn = Vec<Vec<(String, String)>>;

/// What a client certificate names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    subject: Option<Dn>,
    uris: Vec<String>,
    dns: Vec<String>,
}

impl ClientCert {
    /// From a DER certificate (the leaf the TLS handshake verified, or the
    /// one a trusted proxy forwarded).
    pub fn from_der(der: &[u8]) -> Result<ClientCert, &'static str> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|_| "the client certificate cannot be read")?;
        let tbs = &cert.tbs_certificate;
        let (mut uris, mut dns) = (Vec::new(), Vec::new());
        if let Ok(Some((_, san))) = tbs.get::<SubjectAltName>() {
            for name in san.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(u) => uris.push(u.as_str().to_owned()),
                    GeneralName::DnsName(d) => dns.push(d.as_str().to_owned()),
                    _ => {}
                }
            }
        }
        Ok(ClientCert { subject: Some(comparable(&tbs.subject)), uris, dns })
    }

    /// From the fields a proxy forwarded (`Subject`, `URI`, `DNS` of an
    /// `x-forwarded-client-cert` element); a subject that does not parse as
    /// an RFC 4514 string is refused rather than ignored.
    pub fn from_fields(subject: Option<&str>, uris: Vec<String>, dns: Vec<String>) -> Result<ClientCert, &'static str> {
        let subject = match subject {
            Some(s) => Some(parse_dn(s).ok_or("the forwarded Subject is not an RFC 4514 distinguished name")?),
            None => None,
        };
        Ok(ClientCert { subject, uris, dns })
    }
}

/// What a `tls_client_auth` client's certificate must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatcher {
    SubjectDn(Dn),
    SanUri(String),
    SanDns(String),
}

impl CertMatcher {
    /// The matcher a client configures (check-config made sure there is
    /// exactly one and that a DN parses); none for other clients.
    pub fn of(client: &Client) -> Result<Option<CertMatcher>, String> {
        if let Some(dn) = &client.tls_client_auth_subject_dn {
            let parsed = parse_dn(dn).ok_or_else(|| {
                format!("client {:?}: tls_client_auth_subject_dn is not an RFC 4514 name", client.client_id)
            })?;
            return Ok(Some(CertMatcher::SubjectDn(parsed)));
        }
        if let Some(uri) = &client.tls_client_auth_san_uri {
            return Ok(Some(CertMatcher::SanUri(uri.clone())));
        }
        Ok(client.tls_client_auth_san_dns.as_ref().map(|d| CertMatcher::SanDns(d.clone())))
    }

    pub fn matches(&self, cert: &ClientCert) -> bool {
        match self {
            CertMatcher::SubjectDn(dn) => cert.subject.as_ref() == Some(dn),
            CertMatcher::SanUri(uri) => cert.uris.iter().any(|u| u == uri),
            CertMatcher::SanDns(name) => cert.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
        }
    }
}

fn parse_dn(text: &str) -> Option<Dn> {
    Name::from_str(text).ok().map(|n| comparable(&n))
}

fn comparable(name: &Name) -> Dn {
    name.0
        .iter()
        .map(|rdn| {
            let mut atvs: Vec<(String, String)> =
                rdn.0.iter().map(|atv| (atv.oid.to_string(), value(&atv.value))).collect();
            atvs.sort();
            atvs
        })
        .collect()
}

/// A string value normalized (case, blanks); anything else as hex DER.
fn value(any: &x509_cert::der::Any) -> String {
    let text = match any.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            std::str::from_utf8(any.value()).ok()
        }
        _ => None,
    };
    match text {
        Some(s) => s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase(),
        None => {
            let der = any.to_der().unwrap_or_default();
            format!("#{}", der.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, SanType};

    use super::*;

    fn cert(dn: &[(DnType, DnValue)], sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut name = DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), v.clone());
        }
        params.distinguished_name = name;
        params.subject_alt_names = sans;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    fn matcher(dn: &str) -> CertMatcher {
        CertMatcher::SubjectDn(parse_dn(dn).unwrap())
    }

    #[test]
    fn subject_dn_matches_by_attribute_ignoring_case_blanks_and_string_type() {
        let der = cert(
            &[
                (DnType::CountryName, DnValue::PrintableString("DE".try_into().unwrap())),
                (DnType::OrganizationName, DnValue::Utf8String("Example  Shop".into())),
                (DnType::CommonName, DnValue::Utf8String("web".into())),
            ],
            vec![],
        );
        let c = ClientCert::from_der(&der).unwrap();
        // RFC 4514 order is the reverse of the DER order.
        assert!(matcher("CN=web,O=Example Shop,C=DE").matches(&c));
        assert!(matcher("CN=WEB,O=example   SHOP,C=de").matches(&c));
        assert!(matcher("cn=web,o=Example Shop,c=DE").matches(&c), "attribute names ignore case too");
        assert!(!matcher("C=DE,O=Example Shop,CN=web").matches(&c), "RDN order matters");
        assert!(!matcher("CN=web,O=Example Shop").matches(&c), "every RDN must match");
        assert!(!matcher("CN=web2,O=Example Shop,C=DE").matches(&c));
        assert!(!matcher("CN=web,OU=Example Shop,C=DE").matches(&c), "the attribute type matters");
        // The same through a proxy's Subject field.
        let forwarded = ClientCert::from_fields(Some("CN=web,O=Example Shop,C=DE"), vec![], vec![]).unwrap();
        assert!(matcher("CN=web,O=Example Shop,C=DE").matches(&forwarded));
        assert!(ClientCert::from_fields(Some("not a dn"), vec![], vec![]).is_err());
    }

    #[test]
    fn sans_match_exactly_dns_without_case() {
        let web = "spiffe://example.org/ns/shop/sa/web";
        let der = cert(
            &[(DnType::CommonName, DnValue::Utf8String("web".into()))],
            vec![SanType::DnsName("Web.Shop.example".try_into().unwrap()), SanType::URI(web.try_into().unwrap())],
        );
        let c = ClientCert::from_der(&der).unwrap();
        assert!(CertMatcher::SanUri(web.into()).matches(&c));
        assert!(!CertMatcher::SanUri(format!("{web}/x")).matches(&c));
        assert!(!CertMatcher::SanUri("spiffe://example.org/ns/shop/sa/WEB".into()).matches(&c));
        assert!(CertMatcher::SanDns("web.shop.example".into()).matches(&c));
        assert!(!CertMatcher::SanDns("*.shop.example".into()).matches(&c), "no wildcards");
        assert!(!CertMatcher::SanDns("web".into()).matches(&c), "a DN value is not a DNS SAN");
        assert!(ClientCert::from_der(b"junk").is_err());
    }
}
