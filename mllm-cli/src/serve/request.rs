//! Turns an OpenAI-style JSON body (chat or legacy completions) into a checked [`Request`],
//! and every problem into an [`ApiError`] in the OpenAI error shape naming the parameter.
//! Pure parsing: no I/O, no tokenizer, no model.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mllm::models::{ChatMessage, SamplingParams};
use serde_json::{json, Map, Value};

use super::logprobs::MAX_TOP_LOGPROBS;

/// At most this many stop strings, as the OpenAI API allows.
const MAX_STOP_STRINGS: usize = 4;

/// An error answer: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param` (if any).
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.body().to_string()).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Which endpoint a body was sent to (they accept different fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What to run the model on.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Messages for the chat template.
    Chat(Vec<ChatMessage>),
    /// Raw text (encoded as text: special-token strings stay text).
    Text(String),
    /// Token ids as given.
    Tokens(Vec<u32>),
}

/// A checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The model asked for (checked against the served names by the caller).
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Most tokens to generate; `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Whether the caller gave a seed (without one, sampling is not reproducible).
    pub seeded: bool,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Streaming only: send a last chunk with the token counts.
    pub include_usage: bool,
    /// Return log-probabilities, with this many alternatives per token (chat's
    /// `logprobs: true` + `top_logprobs`, or the legacy `logprobs: N`).
    pub logprobs: Option<usize>,
    /// Legacy completions: the answer starts with the prompt (and, with `logprobs`, the
    /// prompt's tokens are scored).
    pub echo: bool,
    /// Extension (llama-server, vLLM): go on past the model's end-of-text token until
    /// `max_tokens` or a stop string.
    pub ignore_eos: bool,
}

/// Fields each endpoint understands. Anything else is refused, as the OpenAI API does,
/// rather than silently ignored.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "logprobs",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    // Extensions found in other local servers.
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
];
const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "metadata",
    "store",
    "service_tier",
];
const COMPLETION_FIELDS: &[&str] = &["prompt", "echo", "best_of", "suffix"];

/// Typed access to the body's fields; a wrong type names the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The field's value, with `null` treated as absent.
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| type_error(key, "a number", v)),
        }
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match (v.as_i64(), v.as_u64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(_)) => Err(ApiError::invalid(Some(key), format!("'{key}' is too large"))),
                _ => Err(type_error(key, "an integer", v)),
            },
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| type_error(key, "a boolean", v)),
        }
    }
}

/// How a JSON value is named in error messages (`an integer`, `a string`, ...).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_error(key: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(Some(key), format!("'{key}' must be {expected}, not {}", type_name(got)))
        .with_code("invalid_type")
}

fn unsupported(key: &str, what: &str) -> ApiError {
    ApiError::invalid(Some(key), format!("'{key}': {what} is not supported by this server"))
        .with_code("unsupported_parameter")
}

/// Parse a request body for `endpoint`.
pub fn parse(body: &[u8], endpoint: Endpoint) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            None,
            format!("the request body must be a JSON object, not {}", type_name(&value)),
        ));
    };
    let own = match endpoint {
        Endpoint::Chat => CHAT_FIELDS,
        Endpoint::Completions => COMPLETION_FIELDS,
    };
    if let Some(k) = map.keys().find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !own.contains(&k.as_str())) {
        return Err(ApiError::invalid(Some(k), format!("unrecognized request argument supplied: {k}"))
            .with_code("unknown_parameter"));
    }
    let f = Fields(&map);
    refuse_unsupported(&f)?;

    let model = match f.get("model") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(v) => return Err(type_error("model", "a string", v)),
    };
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(parse_messages(f.get("messages"))?),
        Endpoint::Completions => parse_prompt(f.get("prompt"))?,
    };

    let echo = f.boolean("echo")?.unwrap_or(false);
    let ignore_eos = f.boolean("ignore_eos")?.unwrap_or(false);
    let logprobs = parse_logprobs(&f, endpoint)?;
    let max_key = if f.get("max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" };
    let max_tokens = match f.integer(max_key)? {
        None => None,
        // Nothing to generate: only the prompt, echoed (and scored).
        Some(0) if echo => Some(0),
        Some(n) if n < 1 => {
            let also = if endpoint == Endpoint::Completions { " (0 only with echo, to score the prompt)" } else { "" };
            return Err(ApiError::invalid(Some(max_key), format!("'{max_key}' must be at least 1{also}")));
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };

    // OpenAI defaults: temperature 1, top_p 1, no top-k, min-p or penalty.
    let temperature = f.number("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(Some("temperature"), "'temperature' must be between 0 and 2"));
    }
    let top_p = f.number("top_p")?.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(ApiError::invalid(Some("top_p"), "'top_p' must be between 0 and 1"));
    }
    let top_k = f.integer("top_k")?.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::invalid(Some("top_k"), "'top_k' must be 0 (off) or more"));
    }
    let min_p = f.number("min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(Some("min_p"), "'min_p' must be between 0 and 1"));
    }
    let repetition_penalty = f.number("repetition_penalty")?.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(ApiError::invalid(Some("repetition_penalty"), "'repetition_penalty' must be in (0, 10]"));
    }
    let seed = f.integer("seed")?;
    let sampling = SamplingParams {
        temperature: temperature as f32,
        top_k: top_k as usize,
        // top_p 0 means "only the most likely token"; the sampler wants it above 0.
        top_p: (top_p as f32).max(f32::MIN_POSITIVE),
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        seed: seed.map_or_else(rand::random, |s| s as u64),
        ..SamplingParams::default()
    };

    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| type_error("stop", "a string or an array of strings", v))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(type_error("stop", "a string or an array of strings", v)),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(Some("stop"), format!("at most {MAX_STOP_STRINGS} stop strings are allowed")));
    }
    let stop = stop.into_iter().filter(|s| !s.is_empty()).collect();

    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| k.as_str() != "include_usage") {
                return Err(ApiError::invalid(Some("stream_options"), format!("unknown stream option '{k}'")));
            }
            Fields(o).boolean("include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(type_error("stream_options", "an object", v)),
    };
    Ok(Request {
        model,
        prompt,
        max_tokens,
        sampling,
        seeded: seed.is_some(),
        stop,
        stream,
        include_usage,
        logprobs,
        echo,
        ignore_eos,
    })
}

/// Chat: `logprobs` (a boolean) and `top_logprobs` (0..=20, only with `logprobs: true`, as
/// OpenAI requires); legacy completions: `logprobs` (0..=20 alternatives; OpenAI's own
/// legacy endpoint stops at 5).
fn parse_logprobs(f: &Fields, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    let max = MAX_TOP_LOGPROBS as i64;
    let in_range = |key: &str, n: i64| {
        if (0..=max).contains(&n) {
            Ok(n as usize)
        } else {
            Err(ApiError::invalid(Some(key), format!("'{key}' must be between 0 and {max}, not {n}")))
        }
    };
    match endpoint {
        Endpoint::Chat => {
            let on = f.boolean("logprobs")?.unwrap_or(false);
            let top = f.integer("top_logprobs")?.map(|n| in_range("top_logprobs", n)).transpose()?;
            match (on, top) {
                (false, Some(_)) => {
                    Err(ApiError::invalid(Some("top_logprobs"), "'top_logprobs' needs 'logprobs' set to true"))
                }
                (false, None) => Ok(None),
                (true, top) => Ok(Some(top.unwrap_or(0))),
            }
        }
        Endpoint::Completions => f.integer("logprobs")?.map(|n| in_range("logprobs", n)).transpose(),
    }
}

/// Known fields this server cannot honour: accepted only at their neutral values.
fn refuse_unsupported(f: &Fields) -> Result<(), ApiError> {
    for key in ["n", "best_of"] {
        if let Some(n) = f.integer(key)? {
            if n != 1 {
                return Err(unsupported(key, "more than one choice per request"));
            }
        }
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if f.number(key)?.is_some_and(|x| x != 0.0) {
            return Err(unsupported(key, "a non-zero penalty (use 'repetition_penalty')"));
        }
    }
    match f.get("logit_bias") {
        None => {}
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(Value::Object(_)) => return Err(unsupported("logit_bias", "biasing tokens")),
        Some(v) => return Err(type_error("logit_bias", "an object", v)),
    }
    for key in ["tools", "functions"] {
        match f.get(key) {
            None => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(unsupported(key, "tool and function calling")),
        }
    }
    for key in ["tool_choice", "function_call"] {
        match f.get(key) {
            None => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(unsupported(key, "forcing a tool call")),
        }
    }
    match f.get("response_format") {
        None => {}
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(Value::Object(_)) => return Err(unsupported("response_format", "a response format other than text")),
        Some(v) => return Err(type_error("response_format", "an object", v)),
    }
    if let Some(v) = f.get("suffix") {
        if v.as_str().is_none_or(|s| !s.is_empty()) {
            return Err(unsupported("suffix", "a suffix (fill-in-the-middle)"));
        }
    }
    if let Some(v) = f.get("user") {
        if !v.is_string() {
            return Err(type_error("user", "a string", v));
        }
    }
    Ok(())
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match v {
        None => return Err(ApiError::invalid(Some("messages"), "'messages' is required")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(type_error("messages", "an array", v)),
    };
    if items.is_empty() {
        return Err(ApiError::invalid(Some("messages"), "'messages' must hold at least one message"));
    }
    items.iter().enumerate().map(|(i, m)| parse_message(i, m)).collect()
}

fn parse_message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(o) = m else {
        return Err(type_error(&format!("messages[{i}]"), "an object", m));
    };
    if let Some(k) = o.keys().find(|k| !["role", "content", "name"].contains(&k.as_str())) {
        let p = at(k);
        return Err(ApiError::invalid(Some(&p), format!("'{p}' is not supported by this server"))
            .with_code("unsupported_parameter"));
    }
    let role = match o.get("role") {
        Some(Value::String(r)) => r.as_str(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(Some(&at("role")), format!("'{}' is required", at("role"))))
        }
        Some(v) => return Err(type_error(&at("role"), "a string", v)),
    };
    let role = match role {
        "system" | "user" | "assistant" => role,
        // Newer clients call the system prompt "developer".
        "developer" => "system",
        "tool" | "function" => return Err(unsupported(&at("role"), "tool and function messages")),
        other => {
            return Err(ApiError::invalid(
                Some(&at("role")),
                format!("'{}' is '{other}'; expected system, user, assistant or developer", at("role")),
            ))
        }
    };
    if let Some(v) = o.get("name").filter(|v| !v.is_string() && !v.is_null()) {
        return Err(type_error(&at("name"), "a string", v));
    }
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("messages[{i}].content[{j}]");
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), _) => {
                        return Err(ApiError::invalid(Some(&p), format!("'{p}' needs a string 'text'")))
                    }
                    (Some(kind), _) => return Err(unsupported(&p, &format!("content of type '{kind}'"))),
                    (None, _) => return Err(ApiError::invalid(Some(&p), format!("'{p}' needs a 'type'"))),
                }
            }
            text
        }
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(Some(&at("content")), format!("'{}' is required", at("content"))))
        }
        Some(v) => return Err(type_error(&at("content"), "a string or an array of text parts", v)),
    };
    Ok(ChatMessage::new(role, content))
}

fn parse_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let bad = |v: &Value| type_error("prompt", "a string, an array of one string, or an array of token ids", v);
    match v {
        None => Err(ApiError::invalid(Some("prompt"), "'prompt' is required")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => Err(ApiError::invalid(Some("prompt"), "'prompt' is empty")),
            [Value::String(s)] => Ok(Prompt::Text(s.clone())),
            [Value::String(_), ..] => Err(unsupported("prompt", "more than one prompt per request")),
            [Value::Array(_), ..] => Err(unsupported("prompt", "more than one prompt per request")),
            ids => ids
                .iter()
                .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| bad(x)))
                .collect::<Result<Vec<u32>, _>>()
                .map(Prompt::Tokens),
        },
        Some(v) => Err(bad(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<Request, ApiError> {
        parse(body.as_bytes(), Endpoint::Chat)
    }

    fn param_of(r: Result<Request, ApiError>) -> Option<String> {
        let e = r.expect_err("expected an error");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.kind, "invalid_request_error");
        e.param
    }

    #[test]
    fn a_full_chat_request_is_read() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_tokens":7,"temperature":0,"top_p":0.5,"seed":-3,"stop":["\n","END"],"stream":true,
                "stream_options":{"include_usage":true},"n":1,"top_k":5,"ignore_eos":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi there")])
        );
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.sampling.top_p, 0.5);
        assert_eq!(r.sampling.top_k, 5);
        assert_eq!(r.sampling.seed, (-3i64) as u64);
        assert!(r.seeded && r.stream && r.include_usage && r.ignore_eos);
        assert_eq!(r.stop, vec!["\n".to_string(), "END".to_string()]);
    }

    #[test]
    fn defaults_follow_the_openai_api() {
        let r = chat(r#"{"messages":[{"role":"developer","content":"x"}],"max_tokens":null}"#).unwrap();
        assert_eq!(r.prompt, Prompt::Chat(vec![ChatMessage::new("system", "x")]));
        assert_eq!(r.max_tokens, None);
        assert_eq!((r.sampling.temperature, r.sampling.top_p, r.sampling.top_k), (1.0, 1.0, 0));
        assert!(!r.seeded && !r.stream && !r.include_usage && !r.ignore_eos && r.stop.is_empty());
        r.sampling.validate().unwrap();
    }

    #[test]
    fn prompts_of_the_completions_endpoint() {
        let p = |b: &str| parse(b.as_bytes(), Endpoint::Completions).map(|r| r.prompt);
        assert_eq!(p(r#"{"prompt":"abc"}"#).unwrap(), Prompt::Text("abc".into()));
        assert_eq!(p(r#"{"prompt":["abc"]}"#).unwrap(), Prompt::Text("abc".into()));
        assert_eq!(p(r#"{"prompt":[1,2,3]}"#).unwrap(), Prompt::Tokens(vec![1, 2, 3]));
        assert_eq!(param_of(parse(br#"{"prompt":[1,-2]}"#, Endpoint::Completions)), Some("prompt".into()));
        assert_eq!(param_of(parse(br#"{"prompt":["a","b"]}"#, Endpoint::Completions)), Some("prompt".into()));
        assert_eq!(param_of(parse(br#"{"prompt":5}"#, Endpoint::Completions)), Some("prompt".into()));
        assert_eq!(param_of(parse(br#"{}"#, Endpoint::Completions)), Some("prompt".into()));
        // Chat-only fields are unknown here.
        assert_eq!(param_of(parse(br#"{"prompt":"a","messages":[]}"#, Endpoint::Completions)), Some("messages".into()));
    }

    #[test]
    fn logprobs_echo_and_max_tokens_0() {
        let chat_lp = |extra: &str| {
            chat(&format!(r#"{{"messages":[{{"role":"user","content":"x"}}]{extra}}}"#)).map(|r| r.logprobs)
        };
        assert_eq!(chat_lp("").unwrap(), None);
        assert_eq!(chat_lp(r#","logprobs":false"#).unwrap(), None);
        assert_eq!(chat_lp(r#","logprobs":true"#).unwrap(), Some(0));
        assert_eq!(chat_lp(r#","logprobs":true,"top_logprobs":20"#).unwrap(), Some(20));
        assert_eq!(chat_lp(r#","logprobs":true,"top_logprobs":null"#).unwrap(), Some(0));
        let comp = |extra: &str| parse(format!(r#"{{"prompt":"x"{extra}}}"#).as_bytes(), Endpoint::Completions);
        let r = comp(r#","logprobs":5,"echo":true,"max_tokens":0"#).unwrap();
        assert_eq!((r.logprobs, r.echo, r.max_tokens), (Some(5), true, Some(0)));
        let r = comp(r#","logprobs":0"#).unwrap();
        assert_eq!((r.logprobs, r.echo, r.max_tokens), (Some(0), false, None));
        assert_eq!(comp(r#","logprobs":null,"echo":false"#).unwrap().logprobs, None);
        for (extra, param) in [
            (r#","logprobs":21"#, "logprobs"),
            (r#","logprobs":-1"#, "logprobs"),
            (r#","logprobs":true"#, "logprobs"),
            (r#","echo":"yes""#, "echo"),
            (r#","max_tokens":0"#, "max_tokens"),
            (r#","max_tokens":0,"echo":false"#, "max_tokens"),
            (r#","max_tokens":-1,"echo":true"#, "max_tokens"),
            (r#","top_logprobs":2"#, "top_logprobs"),
        ] {
            assert_eq!(param_of(comp(extra)), Some(param.to_string()), "{extra}");
        }
    }

    #[test]
    fn bad_bodies_name_the_parameter() {
        let msgs = r#""messages":[{"role":"user","content":"x"}]"#;
        let with = |extra: &str| chat(&format!("{{{msgs},{extra}}}"));
        assert_eq!(param_of(chat("{not json")), None);
        assert_eq!(param_of(chat("[1,2]")), None);
        assert_eq!(param_of(chat("{}")), Some("messages".into()));
        assert_eq!(param_of(chat(r#"{"messages":[]}"#)), Some("messages".into()));
        assert_eq!(param_of(chat(r#"{"messages":"hi"}"#)), Some("messages".into()));
        assert_eq!(param_of(chat(r#"{"messages":[{"role":"user"}]}"#)), Some("messages[0].content".into()));
        assert_eq!(param_of(chat(r#"{"messages":[{"role":"robot","content":"x"}]}"#)), Some("messages[0].role".into()));
        assert_eq!(param_of(chat(r#"{"messages":[{"role":"user","content":7}]}"#)), Some("messages[0].content".into()));
        assert_eq!(
            param_of(chat(r#"{"messages":[{"role":"user","content":"x","tool_calls":[]}]}"#)),
            Some("messages[0].tool_calls".into())
        );
        assert_eq!(
            param_of(chat(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)),
            Some("messages[0].content[0]".into())
        );
        for (extra, param) in [
            (r#""max_tokens":"8""#, "max_tokens"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":1.5"#, "max_tokens"),
            (r#""max_completion_tokens":-1"#, "max_completion_tokens"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""temperature":2.5"#, "temperature"),
            (r#""top_p":1.5"#, "top_p"),
            (r#""top_k":-1"#, "top_k"),
            (r#""seed":"x""#, "seed"),
            (r#""seed":18446744073709551615"#, "seed"),
            (r#""stop":5"#, "stop"),
            (r#""stop":["a",1]"#, "stop"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""stream":"yes""#, "stream"),
            (r#""ignore_eos":1"#, "ignore_eos"),
            (r#""stream_options":{"bogus":true}"#, "stream_options"),
            (r#""n":2"#, "n"),
            (r#""logprobs":"yes""#, "logprobs"),
            (r#""logprobs":1"#, "logprobs"),
            (r#""logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":-1"#, "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":1.5"#, "top_logprobs"),
            (r#""top_logprobs":2"#, "top_logprobs"),
            (r#""logprobs":false,"top_logprobs":0"#, "top_logprobs"),
            (r#""echo":true"#, "echo"),
            (r#""presence_penalty":0.5"#, "presence_penalty"),
            (r#""tools":[{"type":"function"}]"#, "tools"),
            (r#""response_format":{"type":"json_object"}"#, "response_format"),
            (r#""logit_bias":{"5":1}"#, "logit_bias"),
            (r#""model":3"#, "model"),
            (r#""frobnicate":true"#, "frobnicate"),
            (r#""prompt":"x""#, "prompt"),
        ] {
            assert_eq!(param_of(with(extra)), Some(param.to_string()), "{extra}");
        }
        // Neutral values of unsupported features are fine.
        with(r#""n":1,"logprobs":false,"presence_penalty":0,"tools":[],"tool_choice":"none","user":"u""#).unwrap();
    }

    #[test]
    fn the_error_body_has_the_openai_shape() {
        let e = ApiError::invalid(Some("max_tokens"), "too many");
        let v = e.body();
        let o = v["error"].as_object().unwrap();
        assert_eq!(o.len(), 4);
        assert_eq!(o["message"], "too many");
        assert_eq!(o["type"], "invalid_request_error");
        assert_eq!(o["param"], "max_tokens");
        assert!(o["code"].is_null());
    }
}
