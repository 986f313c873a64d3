//! Request extractors: the caller's identity and JSON bodies, both failing with stable codes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::auth::{self, Actor};
use awooop_store::tenancy::ProjectId;

/// Header naming the project an admin credential acts on.
pub const PROJECT_HEADER: &str = "x-awooop-project";

/// The authenticated caller. API keys fix the project; the admin token may name one with the
/// `X-Awooop-Project` header.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor: Actor,
    pub project: Option<ProjectId>,
    /// A runner key's agents and environments (`None` for the admin and non-runner keys).
    pub binding: Option<auth::KeyBinding>,
}

impl Caller {
    /// The project the request acts on.
    pub fn project(&self) -> Result<ProjectId> {
        self.project.clone().ok_or_else(|| {
            Error::new(
                ErrorCode::ReqInvalidParam,
                "the admin credential must name a project with the X-Awooop-Project header",
            )
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Error::new(ErrorCode::AuthMissing, "missing Authorization header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::AuthInvalid,
                    "expected 'Authorization: Bearer <token>'",
                )
            })?;
        if let Some(admin) = &state.admin
            && admin.matches(token)
        {
            let project = match parts.headers.get(PROJECT_HEADER) {
                None => None,
                Some(v) => Some(ProjectId::parse(v.to_str().map_err(|_| {
                    Error::new(
                        ErrorCode::ReqInvalidParam,
                        "X-Awooop-Project is not valid text",
                    )
                })?)?),
            };
            if let (Some(p), Some(slot)) = (
                &project,
                parts.extensions.get::<super::access_log::LogProject>(),
            ) {
                slot.set(p.as_str());
            }
            return Ok(Caller {
                actor: Actor::cli("admin"),
                project,
                binding: None,
            });
        }
        let (project, actor, binding) =
            auth::verify_api_key_bound(state.control.db(), token).await?;
        // An API key is bound to its project: a header naming another project is refused, not
        // silently ignored.
        if let Some(v) = parts.headers.get(PROJECT_HEADER)
            && v.as_bytes() != project.as_str().as_bytes()
        {
            return Err(Error::new(
                ErrorCode::AuthForbidden,
                "this credential cannot act on another project",
            ));
        }
        if let Some(slot) = parts.extensions.get::<super::access_log::LogProject>() {
            slot.set(project.as_str());
        }
        Ok(Caller {
            actor,
            project: Some(project),
            binding,
        })
    }
}

/// A JSON body read with the configured size limit; typed request structs reject unknown
/// fields, so every shape error maps to `E-REQ-001`. The body must be declared JSON (415
/// `E-REQ-004` otherwise) and may not contain U+0000 (see [`super::guard`]).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        super::guard::require_json(req.headers())?;
        let limit = state.max_body_bytes;
        let bytes: Bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::ReqTooLarge,
                    format!("request body exceeds {limit} bytes"),
                )
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    super::guard::refuse_nul_in_json(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "request body is not valid JSON"
        } else {
            "request body has the wrong shape"
        };
        Error::new(ErrorCode::ReqMalformed, format!("{what}: {e}"))
    })
}
