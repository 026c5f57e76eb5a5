//! A PEM bundle of CA certificates to trust instead of the public roots
//! (`telemetry.ca_file`, `token_endpoint.replay_store.redis.ca_file`), and
//! the certificates of a PEM text (also the listeners' `cert` and `client_ca`).

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The file's bytes, once it is known to hold at least one PEM certificate
/// and nothing garbled: an empty bundle would trust nothing and fail every
/// connection later. The error names the path, never the contents; callers
/// put their key path before it.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if certificates(&pem).is_err() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// The certificates of a PEM text: at least one, and nothing garbled.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}
