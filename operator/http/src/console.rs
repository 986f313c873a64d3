//! `/console`: the web console, a single-page app built from `operator/http/console/` (Preact,
//! TypeScript, Vite; locked by its `package-lock.json`) into `console/dist/`, which is committed
//! and compiled into the binary here, so a release binary serves it with no CDN and no files
//! on disk. `scripts/console-build.sh --check` rebuilds it with `npm ci` and fails when the
//! committed bundle differs (docs/console.md).
//!
//! Authentication is the API's own: the page asks for an API key (or the admin token and a
//! project) and keeps it in a JavaScript variable, never in storage or a cookie. Every call
//! sends it as `Authorization: Bearer`, which a browser never attaches on its own, so no other
//! site can make a signed-in browser change anything (no CSRF surface), and a reload signs out.
//! The pages are served with a strict Content-Security-Policy: scripts, styles and requests
//! only from this origin, no inline script or style, no framing, no forms posting elsewhere.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &[u8] = include_bytes!("../console/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../console/dist/assets/app.js");
const APP_CSS: &[u8] = include_bytes!("../console/dist/assets/app.css");

/// The policy every console response carries. `connect-src 'self'`: the page can only talk to
/// the API it came from; `img-src data:` for the inline favicon only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/assets/app.js", get(app_js))
        .route("/console/assets/app.css", get(app_css))
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Asset names carry no hash (the bundle is checked for drift byte for byte), so the
    // browser revalidates instead of running an old script against a new API.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
