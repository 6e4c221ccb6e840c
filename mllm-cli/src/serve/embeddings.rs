//! `POST /v1/embeddings` (OpenAI's shape) for `mllm serve --model <encoder>`: request
//! parsing as pure functions (tested without a socket), the answer in float or base64,
//! and the small server an embedding model runs (a decoder's server answers this route
//! with [`not_an_embedding_model`]; this one answers chat/completions with an error).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mllm::models::EmbeddingModel;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::request::{type_name, ApiError};
use super::{conn, guard, json_response, lifecycle, read_body, run_runtime, unix_now, ServeArgs, Site};

/// Inputs in one request at most (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// What to embed: texts, or token id sequences (special tokens added where missing, see
/// `EmbeddingModel::check_ids`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl EmbedInput {
    fn len(&self) -> usize {
        match self {
            EmbedInput::Texts(v) => v.len(),
            EmbedInput::Tokens(v) => v.len(),
        }
    }
}

/// A checked embeddings request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedRequest {
    pub input: EmbedInput,
    /// Vectors as base64 of little-endian f32 bytes instead of JSON numbers.
    pub base64: bool,
    /// `dimensions`, if given (must equal the model's: no truncation is offered).
    pub dimensions: Option<usize>,
}

/// Parse a `/v1/embeddings` body. `input`: a string, an array of strings, an array of
/// token ids, or an array of arrays of token ids; none of them empty.
pub fn parse(body: &[u8]) -> Result<EmbedRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid(None, "the request body must be a JSON object"));
    };
    let input = parse_input(obj.get("input"))?;
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(other) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                format!("encoding_format must be \"float\" or \"base64\", got {other}"),
            ))
        }
    };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(d) => Some(d.as_u64().filter(|&d| d > 0).map(|d| d as usize).ok_or_else(|| {
            ApiError::invalid(Some("dimensions"), format!("dimensions must be a positive integer, got {d}"))
        })?),
    };
    check_strings(&obj, &["model", "user"])?;
    Ok(EmbedRequest { input, base64, dimensions })
}

fn check_strings(obj: &Map<String, Value>, keys: &[&str]) -> Result<(), ApiError> {
    for k in keys {
        if let Some(v) = obj.get(*k).filter(|v| !v.is_null() && !v.is_string()) {
            return Err(ApiError::invalid(Some(k), format!("{k} must be a string, got {v}")));
        }
    }
    Ok(())
}

fn parse_input(v: Option<&Value>) -> Result<EmbedInput, ApiError> {
    let bad = |msg: String| ApiError::invalid(Some("input"), msg);
    let what = "input must be a string, an array of strings, an array of token ids or an array of arrays of token ids";
    let items = match v {
        None | Some(Value::Null) => return Err(bad("input is required".into())),
        Some(Value::String(s)) => {
            if s.is_empty() {
                return Err(bad("input is an empty string".into()));
            }
            return Ok(EmbedInput::Texts(vec![s.clone()]));
        }
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("{what}; got {}", type_name(other)))),
    };
    if items.is_empty() {
        return Err(bad("input is an empty array".into()));
    }
    if items.len() > MAX_INPUTS {
        return Err(bad(format!("input has {} items; at most {MAX_INPUTS} are allowed", items.len())));
    }
    let token = |x: &Value, at: String| -> Result<u32, ApiError> {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(format!("{at} must be a token id (a non-negative integer), got {x}")))
    };
    match &items[0] {
        Value::String(_) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) if s.is_empty() => Err(bad(format!("input[{i}] is an empty string"))),
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(format!("input[{i}] must be a string like input[0], got {}", type_name(other)))),
            })
            .collect::<Result<_, _>>()
            .map(EmbedInput::Texts),
        Value::Number(_) => items
            .iter()
            .enumerate()
            .map(|(i, x)| token(x, format!("input[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(|ids| EmbedInput::Tokens(vec![ids])),
        Value::Array(_) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::Array(ids) if ids.is_empty() => Err(bad(format!("input[{i}] is an empty array of token ids"))),
                Value::Array(ids) => {
                    ids.iter().enumerate().map(|(j, t)| token(t, format!("input[{i}][{j}]"))).collect()
                }
                other => Err(bad(format!(
                    "input[{i}] must be an array of token ids like input[0], got {}",
                    type_name(other)
                ))),
            })
            .collect::<Result<_, _>>()
            .map(EmbedInput::Tokens),
        other => Err(bad(format!("{what}; input[0] is {}", type_name(other)))),
    }
}

/// Standard base64 (RFC 4648, with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | (b[2] as u32);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The answer's `embedding` value for one vector.
fn encode_vector(v: &[f32], as_base64: bool) -> Value {
    if as_base64 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Value::String(base64(&bytes))
    } else {
        Value::Array(v.iter().map(|&x| json!(x)).collect())
    }
}

// ---- the embedding server ---------------------------------------------------------

struct EmbedState {
    model: EmbeddingModel,
    model_id: String,
    created: u64,
    max_body: usize,
    body_timeout: std::time::Duration,
    /// Requests computing at once (`--max-concurrent`); the others wait their turn.
    slots: Semaphore,
}

type Shared = Arc<EmbedState>;

/// Serve `model` (an encoder): `/v1/embeddings`, `/v1/models`, `/health`; the text
/// generation endpoints answer that this model cannot generate.
pub fn serve(args: ServeArgs, model: EmbeddingModel, limits: conn::Limits, policy: guard::Policy) -> Result<()> {
    if args.ctx.is_some() || args.no_batch {
        bail!(
            "--ctx and --no-batch apply to text generation models, not to the embedding model {}",
            model.path.display()
        );
    }
    let model_id = model.path.file_name().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    let state = Arc::new(EmbedState {
        model,
        model_id,
        created: unix_now(),
        max_body: args.max_body,
        body_timeout: args.body_timeout,
        slots: Semaphore::new(args.max_concurrent.min(Semaphore::MAX_PERMITS)),
    });
    let (life, shutdown) = lifecycle(args.shutdown_timeout);
    let (dim, max_len) = (state.model.dim(), state.model.max_seq_length);
    let banner = move |addr: SocketAddr, id: &str, max_connections: usize| {
        format!(
            "serving embeddings of {id} ({dim} dimensions, up to {max_len} tokens per input) on http://{addr} \
             ({} compute threads, at most {max_connections} connections)",
            mllm::context().threads()
        )
    };
    let metrics = Arc::new(super::metrics::Metrics::new(&state.model_id, None));
    let site = Site { app: router(state.clone()), model_id: state.model_id.clone(), life, metrics };
    run_runtime(site, (args.host, args.port), limits, shutdown, policy, banner)
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(cannot_generate))
        .route("/v1/completions", post(cannot_generate))
        .fallback(|| async { ApiError::invalid(None, "no such endpoint").with_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::invalid(None, "method not allowed on this endpoint").with_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .with_state(state)
}

async fn health(State(s): State<Shared>) -> Response {
    json_response(StatusCode::OK, json!({"status": "ok", "model": s.model_id, "kind": "embedding"}))
}

async fn list_models(State(s): State<Shared>) -> Response {
    let m = json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "mllm"});
    json_response(StatusCode::OK, json!({"object": "list", "data": [m]}))
}

async fn cannot_generate(State(s): State<Shared>) -> Response {
    ApiError::invalid(
        Some("model"),
        format!("'{}' is an embedding model: it answers POST /v1/embeddings, not text generation", s.model_id),
    )
    .with_code("model_not_supported")
    .into_response()
}

/// The route a text generation server answers `/v1/embeddings` with.
pub async fn not_an_embedding_model() -> Response {
    ApiError::invalid(
        Some("model"),
        "this server runs a text generation model, which does not embed; start `mllm serve --model minilm` \
         (or another encoder folder) for /v1/embeddings",
    )
    .with_code("model_not_supported")
    .into_response()
}

async fn embeddings(State(s): State<Shared>, body: Body) -> Response {
    handle(s, body).await.unwrap_or_else(|e| {
        eprintln!("{} /v1/embeddings: {}", e.status.as_u16(), e.message);
        e.into_response()
    })
}

async fn handle(s: Shared, body: Body) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let req = parse(&read_body(body, s.max_body, s.body_timeout).await?)?;
    let dim = s.model.dim();
    if let Some(d) = req.dimensions.filter(|&d| d != dim) {
        return Err(ApiError::invalid(
            Some("dimensions"),
            format!("this model's embeddings have {dim} dimensions; dimensions={d} is not supported"),
        ));
    }
    // Tokenize (and check ids) before taking a slot: bad input is answered at once.
    let seqs: Vec<Vec<u32>> = match &req.input {
        EmbedInput::Texts(texts) => texts
            .iter()
            .map(|t| s.model.tokenize(t))
            .collect::<mllm::Result<_>>()
            .map_err(|e| ApiError::invalid(Some("input"), e.to_string()))?,
        EmbedInput::Tokens(seqs) => seqs
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                s.model.check_ids(ids).map_err(|e| ApiError::invalid(Some("input"), format!("input[{i}]: {e}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let _slot = s.slots.acquire().await.map_err(|_| server_error("the server is shutting down".into()))?;
    let model = s.model.clone();
    let n = req.input.len();
    let task = mllm::task::Task::lazy(format!("embed {n} inputs"), move || model.embed_ids(&seqs));
    let out = task.await.map_err(|e| server_error(format!("embedding failed: {e}")))?;
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    let data: Vec<Value> = out
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": encode_vector(&e.vector, req.base64)}))
        .collect();
    eprintln!("200 /v1/embeddings: {n} inputs, {tokens} tokens, {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    Ok(json_response(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": s.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    ))
}

fn server_error(message: String) -> ApiError {
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message, kind: "server_error", param: None, code: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        let e = parse(body.as_bytes()).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        e.message
    }

    #[test]
    fn every_input_form_parses() {
        let p = |b: &str| parse(b.as_bytes()).unwrap();
        assert_eq!(p(r#"{"input": "hi"}"#).input, EmbedInput::Texts(vec!["hi".into()]));
        assert_eq!(p(r#"{"input": ["a", "b"], "model": "x"}"#).input, EmbedInput::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(p(r#"{"input": [101, 7592, 102]}"#).input, EmbedInput::Tokens(vec![vec![101, 7592, 102]]));
        assert_eq!(p(r#"{"input": [[101], [101, 102]]}"#).input, EmbedInput::Tokens(vec![vec![101], vec![101, 102]]));
        assert!(!p(r#"{"input": "hi", "encoding_format": "float"}"#).base64);
        assert!(p(r#"{"input": "hi", "encoding_format": "base64"}"#).base64);
        assert_eq!(p(r#"{"input": "hi", "dimensions": 384}"#).dimensions, Some(384));
    }

    #[test]
    fn empty_and_wrong_typed_inputs_are_named() {
        assert!(err(r#"{}"#).contains("required"));
        assert!(err(r#"{"input": ""}"#).contains("empty string"));
        assert!(err(r#"{"input": []}"#).contains("empty array"));
        assert!(err(r#"{"input": ["a", ""]}"#).contains("input[1] is an empty string"));
        assert!(err(r#"{"input": [[]]}"#).contains("input[0] is an empty array"));
        assert!(err(r#"{"input": 5}"#).contains("got an integer"));
        assert!(err(r#"{"input": {"a": 1}}"#).contains("got an object"));
        assert!(err(r#"{"input": ["a", 5]}"#).contains("input[1] must be a string"));
        assert!(err(r#"{"input": [1, -2]}"#).contains("input[1]"));
        assert!(err(r#"{"input": [1, 2.5]}"#).contains("token id"));
        assert!(err(r#"{"input": [[1], [2, "x"]]}"#).contains("input[1][1]"));
        assert!(err(r#"{"input": [true]}"#).contains("input[0] is a boolean"));
        assert!(err(r#"{"input": "a", "encoding_format": "int8"}"#).contains("encoding_format"));
        assert!(err(r#"{"input": "a", "dimensions": 0}"#).contains("dimensions"));
        assert!(err(r#"{"input": "a", "model": 3}"#).contains("model must be a string"));
        assert!(err(r#"[1]"#).contains("JSON object"));
        assert!(err(r#"{"input": "#).contains("not valid JSON"));
        let many = format!(r#"{{"input": [{}]}}"#, vec!["\"a\""; MAX_INPUTS + 1].join(","));
        assert!(err(&many).contains("at most"));
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), want);
        }
        assert_eq!(encode_vector(&[1.0], true), json!("AACAPw=="));
        assert_eq!(encode_vector(&[1.0, -0.5], false), json!([1.0, -0.5]));
    }
}
