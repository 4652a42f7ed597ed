//! TLS to the broker: Codabench's worker does not verify the server's
//! certificate ([`TlsMode::NoVerify`]); `--verify-broker-tls` verifies it
//! against the system's roots, or against a private CA given with
//! `--broker-ca-file`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::url::TlsMode;

/// The rustls connector for `mode` (not [`TlsMode::Off`]). `ca_file`, with
/// [`TlsMode::Verify`], replaces the system's roots.
pub fn connector(
    mode: TlsMode,
    ca_file: Option<&Path>,
) -> Result<lapin::tcp::RustlsConnector, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match (mode, ca_file) {
        (TlsMode::Verify, None) => {
            return lapin::tcp::RustlsConnectorConfig::new_with_native_certs()
                .map(|c| c.connector_with_no_client_auth())
                .map_err(|e| format!("cannot load the system's root certificates: {e}"))
        }
        (TlsMode::Verify, Some(file)) => builder
            .with_root_certificates(roots_from(file)?)
            .with_no_client_auth(),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    Ok(config.into())
}

/// The CA certificates of a PEM file.
fn roots_from(file: &Path) -> Result<rustls::RootCertStore, String> {
    let what = format!("broker CA file {} (--broker-ca-file)", file.display());
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the {what}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "the {what} holds no usable certificate: give the PEM file of the CA that signed the broker's certificate"
        ));
    }
    Ok(roots)
}

/// A connection error that is the server's certificate failing
/// verification, explained with the fix; `None` for any other error.
pub fn verification_failure(mode: TlsMode, error: &lapin::Error) -> Option<String> {
    if mode != TlsMode::Verify {
        return None;
    }
    let text = error.to_string();
    let at = text.find("invalid peer certificate")?;
    Some(format!(
        "certificate verification failed: the broker's TLS certificate is not trusted ({}); \
         give the CA that signed it with --broker-ca-file (COMPUTE_WORKER_BROKER_CA_FILE), \
         or drop --verify-broker-tls (Codabench's worker does not verify)",
        &text[at..]
    ))
}

/// Accepts any server certificate (the Python worker's `CERT_NONE`), but
/// still checks handshake signatures so the session keys are sound.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
