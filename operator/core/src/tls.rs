//! The one TLS crypto provider of the process.
//!
//! kube (feature `ring`) and reqwest (feature `rustls-no-provider`) both use rustls with the
//! process-default `CryptoProvider`; only *ring* is compiled in. Every place that builds an
//! HTTPS-capable client calls [`install_crypto_provider`] first (it is idempotent), so library
//! users and tests need no set-up of their own.

/// Install *ring* as rustls' process-default crypto provider, once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_default_provider_is_installed_and_clients_build() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::builder().build().expect("reqwest client");
    }
}
