//! The api's OpenAPI 3.1 document, served at `GET /openapi.json` and
//! checked in as `docs/openapi.json`.
//!
//! Each handler describes itself with `#[utoipa::path]`, and every area
//! registers its handlers through `utoipa_axum::routes!`, so the router
//! that serves a route is the one that documents it: the two cannot list
//! different routes. What holds for many operations at once is added here,
//! in one place, from what each operation declares: a route that takes a
//! token can answer 401, one with a JSON body 413/415/422, every route 429
//! from the global limiter. Every error answer points at the one
//! [`ErrorBody`] schema.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use utoipa::OpenApi;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Components, ContentBuilder, Ref, RefOr, Response as ResponseDoc, ResponseBuilder, Schema,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ErrorBody;
use crate::state::AppState;

/// The name of the bearer security scheme the routes refer to.
pub const BEARER: &str = "bearer";

/// The api's routes and their document, built together.
pub type ApiRouter = OpenApiRouter<AppState>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Filament REST api",
        description = "The REST surface of Filament. Every error answer is \
            `{\"error\":\"<code>\"}` (`ErrorBody`). Ids are canonical ULIDs."
    ),
    servers((url = "/api", description = "The public origin, which strips `/api`.")),
    paths(liveness_probe, readiness_probe),
    // Schemas only parameters name, which `routes!` does not collect.
    components(schemas(
        ErrorBody,
        Id,
        filament_wire::LegacyRole,
        filament_wire::OverrideTargetKind,
    )),
)]
struct ApiDoc;

/// An empty router carrying the document's header.
pub fn new_router() -> ApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(document))
}

/// The document as served; `Arc` so every request shares one copy.
#[derive(Clone)]
pub struct Document(pub Arc<utoipa::openapi::OpenApi>);

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "This document.", body = Object)),
)]
async fn document(Extension(Document(document)): Extension<Document>) -> Response {
    Json(document.as_ref()).into_response()
}

// The probes are `filament_runtime::probes`' plain routes; these stubs only
// describe them, listed in `ApiDoc`'s paths and never routed.
#[allow(dead_code, reason = "documentation only: never routed")]
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process is up.", body = String, content_type = "text/plain")),
)]
async fn liveness_probe() {}

#[allow(dead_code, reason = "documentation only: never routed")]
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "The api can serve.", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready (dependencies down, or draining).", body = String, content_type = "text/plain"),
    ),
)]
async fn readiness_probe() {}

/// The probe paths: served outside the limiter and the extractors.
const PROBE_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// A canonical ULID, the form of every id in a path or body.
pub struct Id;

impl utoipa::ToSchema for Id {}

impl utoipa::PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-7][0-9A-HJKMNP-TV-Z]{25}$"))
            .description(Some("A ULID in canonical form (26 uppercase characters)."))
            .into()
    }
}

pub use paths::*;

/// The path parameters of the routes, for `params(...)`: documentation
/// only, since the handlers read ids through `extract::Ids` in this order.
#[allow(dead_code, reason = "described, never built: `Ids` parses the path")]
mod paths {
    use utoipa::IntoParams;

    use super::Id;

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct GuildPath {
        #[param(value_type = Id)]
        guild_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct ChannelPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct MessagePath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
        #[param(value_type = Id)]
        message_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct EmojiPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
        #[param(value_type = Id)]
        message_id: String,
        /// 1–32 characters (percent-encoded), no whitespace or control
        /// characters.
        #[param(min_length = 1)]
        emoji: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct AttachmentPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
        #[param(value_type = Id)]
        attachment_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct MemberPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        user_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct RolePath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        role_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct RoleMemberPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        role_id: String,
        #[param(value_type = Id)]
        user_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct IpBanPath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        ban_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct UserPath {
        #[param(value_type = Id)]
        user_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct FriendRequestPath {
        #[param(value_type = Id)]
        request_id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct LegacyOverridePath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
        /// The legacy role whose built-in role gets the override.
        #[param(value_type = filament_wire::LegacyRole)]
        role: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct TargetOverridePath {
        #[param(value_type = Id)]
        guild_id: String,
        #[param(value_type = Id)]
        channel_id: String,
        #[param(value_type = filament_wire::OverrideTargetKind)]
        target_kind: String,
        /// A role id or a member's user id, as `target_kind` says.
        #[param(value_type = Id)]
        target_id: String,
    }
}

/// Raw bytes: an upload's body or a download.
pub struct Binary;

impl utoipa::ToSchema for Binary {}

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

/// The error answers an operation's own declaration implies, as (status,
/// when it applies, description).
type Rule = (&'static str, fn(&str, &Operation) -> bool, &'static str);

const IMPLIED_ERRORS: [Rule; 9] = [
    (
        "400",
        |_, op| op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some(),
        "A malformed path id, query parameter or body (`invalid_request`).",
    ),
    (
        "401",
        |_, op| needs_token(op),
        "No valid access token, or its session ended (`invalid_credentials`).",
    ),
    (
        "403",
        |path, _| ip_gated(path),
        "Refused: the caller lacks a permission, or an IP ban of the guild covers \
         the caller's address (`forbidden`).",
    ),
    (
        "413",
        |_, op| has_body(op),
        "The body is over the size limit (`payload_too_large`).",
    ),
    (
        "415",
        |_, op| has_json_body(op),
        "The body is not declared as `application/json` (`invalid_request`).",
    ),
    (
        "422",
        |_, op| has_json_body(op),
        "The body is JSON of the wrong shape: an unknown, missing or mistyped \
         field (`invalid_request`).",
    ),
    (
        "429",
        |_, _| true,
        "Over a rate limit (`rate_limited`); past the global limiter, \
         `retry-after` says when to retry.",
    ),
    (
        "500",
        |_, op| needs_token(op),
        "An unexpected failure (`internal_error`).",
    ),
    (
        "503",
        |_, op| needs_token(op),
        "The database is unavailable or the server is shedding load \
         (`unavailable`); `retry-after` says when to retry.",
    ),
];

/// The routes the IP gate (`client_ip::refuse_ip_banned`) covers.
fn ip_gated(path: &str) -> bool {
    ["/guilds/{guild_id}/channels", "/guilds/{guild_id}/search"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

fn needs_token(operation: &Operation) -> bool {
    operation.security.as_ref().is_some_and(|s| !s.is_empty())
}

fn has_body(operation: &Operation) -> bool {
    operation.request_body.is_some()
}

fn has_json_body(operation: &Operation) -> bool {
    operation
        .request_body
        .as_ref()
        .is_some_and(|body: &RequestBody| body.content.contains_key("application/json"))
}

/// An error response with the shared body.
fn error_response(description: &str) -> ResponseDoc {
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build()
}

/// An implied error response; the answers that ask the client to come
/// back later say when, in `retry-after`.
fn implied_response(status: &str, description: &str) -> ResponseDoc {
    let mut response = error_response(description);
    if matches!(status, "429" | "503") {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1));
        let mut header = Header::new(seconds);
        header.description = Some("Seconds to wait before retrying.".to_owned());
        response.headers.insert("retry-after".to_owned(), header);
    }
    response
}

/// The finished document: the routes' own declarations, the bearer scheme,
/// and the implied error answers (an operation's own description of a
/// status wins).
pub fn finish(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = document.components.get_or_insert_with(Components::new);
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .bearer_format("JWT")
        .description(Some("An access token from `POST /auth/login`."))
        .build();
    components.add_security_scheme(BEARER, SecurityScheme::Http(bearer));
    for (path, item) in &mut document.paths.paths {
        for operation in operations(item) {
            add_implied_errors(path, operation);
            qualify_operation_id(operation);
        }
    }
    document
}

/// `<tag>_<handler>`: handler names repeat across areas (`create`,
/// `list`), and operation ids must be unique in a document.
fn qualify_operation_id(operation: &mut Operation) {
    let tag = operation.tags.iter().flatten().next().cloned();
    if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
        *id = format!("{tag}_{id}");
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn add_implied_errors(path: &str, operation: &mut Operation) {
    if PROBE_PATHS.contains(&path) {
        return;
    }
    for (status, applies, description) in IMPLIED_ERRORS {
        if applies(path, operation) {
            operation
                .responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| implied_response(status, description).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use utoipa::openapi::path::ParameterIn;

    use super::*;

    fn every_operation() -> Vec<(String, Operation)> {
        let document = crate::http::openapi_document();
        let mut all = Vec::new();
        for (path, mut item) in document.paths.paths {
            for operation in operations(&mut item) {
                all.push((path.clone(), operation.clone()));
            }
        }
        all
    }

    #[test]
    fn every_error_answer_is_an_error_body() {
        for (path, operation) in every_operation() {
            if PROBE_PATHS.contains(&path.as_str()) {
                continue;
            }
            for (status, response) in &operation.responses.responses {
                if status.starts_with('2') || status.starts_with('3') {
                    continue;
                }
                let RefOr::T(response) = response else {
                    panic!("{path} {status}: a reference");
                };
                let schema = response
                    .content
                    .get("application/json")
                    .and_then(|c| c.schema.clone());
                let Some(RefOr::Ref(reference)) = schema else {
                    panic!("{path} {status}: not an ErrorBody");
                };
                assert_eq!(
                    reference.ref_location, "#/components/schemas/ErrorBody",
                    "{path} {status}"
                );
            }
        }
    }

    #[test]
    fn every_operation_declares_its_path_ids_and_a_success() {
        for (path, operation) in every_operation() {
            let declared: Vec<String> = operation
                .parameters
                .iter()
                .flatten()
                .filter(|p| p.parameter_in == ParameterIn::Path)
                .map(|p| format!("{{{}}}", p.name))
                .collect();
            let in_template: Vec<String> = path
                .split('/')
                .filter(|segment| segment.starts_with('{'))
                .map(str::to_owned)
                .collect();
            assert_eq!(declared, in_template, "{path}");
            assert!(
                operation
                    .responses
                    .responses
                    .keys()
                    .any(|s| s.starts_with('2')),
                "{path}: no success"
            );
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<_> = every_operation()
            .into_iter()
            .filter_map(|(_, operation)| operation.operation_id)
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
        assert_eq!(count, every_operation().len(), "an operation without an id");
    }

    #[test]
    fn every_secured_operation_names_the_declared_scheme() {
        let document = crate::http::openapi_document();
        let schemes = &document
            .components
            .as_ref()
            .map(|c| c.security_schemes.clone());
        assert!(schemes.as_ref().is_some_and(|s| s.contains_key(BEARER)));
        let text = serde_json::to_value(&document).unwrap_or_default();
        for (path, item) in text["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                for requirement in operation["security"].as_array().into_iter().flatten() {
                    let names: Vec<_> = requirement
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.as_str())
                        .collect();
                    assert_eq!(names, [BEARER], "{method} {path}");
                }
            }
        }
    }

    #[test]
    #[ignore = "prints the document"]
    fn print() {
        let document = crate::http::openapi_document();
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
    }

    #[test]
    fn a_public_operation_without_input_only_gets_the_limiter() {
        let mut op = utoipa::openapi::path::OperationBuilder::new().build();
        add_implied_errors("/health", &mut op);
        let statuses: Vec<_> = op.responses.responses.keys().cloned().collect();
        assert_eq!(statuses, ["429"]);
    }

    #[test]
    fn an_ip_gated_route_can_answer_403() {
        assert!(ip_gated(
            "/guilds/{guild_id}/channels/{channel_id}/messages"
        ));
        assert!(ip_gated("/guilds/{guild_id}/search"));
        assert!(!ip_gated("/guilds/{guild_id}/roles"));
    }
}
