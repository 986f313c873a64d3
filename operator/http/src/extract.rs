//! Request extractors: the caller's identity, its permission and tenant scope, and JSON
//! bodies, all failing with stable codes.
//!
//! # Which extractor does my handler take?
//!
//! | The route … | Take | Checked before the handler runs |
//! |---|---|---|
//! | reads one project's data (GET) | [`Tenant<Read>`](Tenant) | credential, `reader` role, a project |
//! | reads, and one more role may read too | `Tenant<YourMarker>` with [`Need::ReadOr`] | credential, `reader` or that role, a project |
//! | changes one project's data | [`Tenant<Write>`](Tenant) | credential, a project (the operation's role: its service method) |
//! | is a platform-admin action on one project | [`Tenant<Admin>`](Tenant) | credential, admin, a project |
//! | is a platform action on no project | [`Platform`] | credential, admin |
//! | needs a credential only (pure computation) | [`Caller`] | credential |
//!
//! A tenant handler then does all its tenant work inside [`Tenant::run`], which enters the
//! caller's tenant scope (`tenancy::scope`) exactly once:
//!
//! ```ignore
//! async fn get_draft(State(s): State<AppState>, t: Tenant<Read>, Path(id): Path<String>)
//!     -> Result<impl IntoResponse> {
//!     Ok(Json(t.run(s.control.get_draft(uuid(&id)?)).await?))
//! }
//! ```
//!
//! No handler calls `actor.require(..)`, `caller.project()` or `tenancy::scope` itself: the
//! read/write decision lives in [`Need::authorize`] alone.

use std::future::Future;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use awooop_core::error::{Error, ErrorCode, Result};
use awooop_store::auth::{self, Actor, Role};
use awooop_store::tenancy::{self, ProjectId};

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

/// What a route needs from its caller beyond a valid credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read a project's data: the `reader` role.
    Read,
    /// Read with the `reader` role or one other role (e.g. an approver reads the requests
    /// that wait for it). A route declares it with its own marker:
    /// `struct ApprovalsRead; impl Access for ApprovalsRead { const NEED: Need =
    /// Need::ReadOr(Role::Approver); }`.
    ReadOr(Role),
    /// Change a project's data. The role depends on the operation (author, publisher,
    /// approver, activator, runner) and is checked by the service method itself, because the
    /// CLI and the channel hub call the same method and its refusals are audited there with
    /// the operation's details (`revision.publish`, `revision.approve`); checking it here
    /// first would skip that audit row.
    Write,
    /// A write only one role may make, and whose refusal no service audits (deciding an
    /// approval request: the approver role, the principal bound to the key).
    Role(Role),
    /// A platform-administrator action (projects, API keys, signing keys).
    Admin,
}

impl Need {
    /// The one place that decides read vs write permission for every HTTP route.
    pub fn authorize(self, actor: &Actor) -> Result<()> {
        match self {
            Need::Read => actor.require(Role::Reader),
            Need::ReadOr(other) => actor
                .require(Role::Reader)
                .or_else(|_| actor.require(other)),
            Need::Write => Ok(()),
            Need::Role(role) => actor.require(role),
            Need::Admin => actor.require_admin(),
        }
    }
}

/// A permission marker for [`Tenant`]: [`Read`], [`Write`] or [`Admin`] (or a route's own
/// marker naming a [`Need`]).
pub trait Access: Send + Sync + 'static {
    const NEED: Need;
}

/// Marker: the route reads (see [`Need::Read`]).
pub struct Read;
/// Marker: the route writes (see [`Need::Write`]).
pub struct Write;
/// Marker: the route is a platform-admin action on one project (see [`Need::Admin`]).
pub struct Admin;

impl Access for Read {
    const NEED: Need = Need::Read;
}
impl Access for Write {
    const NEED: Need = Need::Write;
}
impl Access for Admin {
    const NEED: Need = Need::Admin;
}

/// An authenticated caller, authorised for `A`, acting on one project. Extracting it resolves
/// the credential ([`Caller`]), applies [`Need::authorize`] and fixes the project; the handler
/// then runs its tenant work in [`Tenant::run`].
pub struct Tenant<A: Access> {
    pub actor: Actor,
    pub project: ProjectId,
    /// A runner key's agents and environments (`None` for the admin and non-runner keys).
    pub binding: Option<auth::KeyBinding>,
    _access: PhantomData<A>,
}

impl<A: Access> Tenant<A> {
    /// Run `fut` inside the caller's tenant scope: the only way a handler reaches tenant rows.
    pub async fn run<F, T>(&self, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        tenancy::scope(self.project.clone(), fut).await
    }

    /// A runner key acts only for the agents it is bound to; other credentials for any.
    pub fn require_agent(&self, agent: &str) -> Result<()> {
        match &self.binding {
            Some(b) if !b.allows_agent(agent) => Err(Error::new(
                ErrorCode::AuthForbidden,
                "this API key is not bound to that agent",
            )),
            _ => Ok(()),
        }
    }
}

impl<A: Access> FromRequestParts<AppState> for Tenant<A> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let caller = Caller::from_request_parts(parts, state).await?;
        A::NEED.authorize(&caller.actor)?;
        let project = caller.project()?;
        Ok(Tenant {
            actor: caller.actor,
            project,
            binding: caller.binding,
            _access: PhantomData,
        })
    }
}

/// The platform administrator, acting on no particular project (list and create projects,
/// mint API keys for a named project).
pub struct Platform {
    pub actor: Actor,
}

impl FromRequestParts<AppState> for Platform {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let caller = Caller::from_request_parts(parts, state).await?;
        Need::Admin.authorize(&caller.actor)?;
        Ok(Platform {
            actor: caller.actor,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(roles: &[Role]) -> Actor {
        Actor {
            principal: "k".into(),
            roles: roles.to_vec(),
            admin: false,
        }
    }

    #[test]
    fn read_write_and_admin_are_decided_here() {
        let admin = Actor::cli("admin");
        let reader = key(&[Role::Reader]);
        let runner = key(&[Role::Runner]);
        let author = key(&[Role::Author]);
        for (actor, need, ok) in [
            (&admin, Need::Read, true),
            (&admin, Need::Write, true),
            (&admin, Need::Admin, true),
            (&reader, Need::Read, true),
            (&reader, Need::Admin, false),
            (&runner, Need::Read, false),
            (&author, Need::Read, false),
            // A write's own role is the service method's to check (audited there).
            (&runner, Need::Write, true),
            (&author, Need::Admin, false),
            (&runner, Need::ReadOr(Role::Runner), true),
            (&reader, Need::ReadOr(Role::Approver), true),
            (&author, Need::ReadOr(Role::Approver), false),
        ] {
            let got = need.authorize(actor);
            assert_eq!(got.is_ok(), ok, "{need:?} {:?}", actor.roles);
            if let Err(e) = got {
                assert_eq!(e.code, ErrorCode::AuthForbidden);
            }
        }
        assert_eq!(<Read as Access>::NEED, Need::Read);
        assert_eq!(<Write as Access>::NEED, Need::Write);
        assert_eq!(<Admin as Access>::NEED, Need::Admin);
    }
}
