//! The model's text side: `tokenizer.json` and `tokenizer_config.json` (chat template,
//! BOS/EOS tokens) of a checkpoint directory.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::chat_template::{ChatTemplate, ChatTemplateError, TemplateMessage};

/// Why the tokenizer files of a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerLoadError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `tokenizer.json` is not a tokenizer the `tokenizers` crate understands.
    #[error("{path} is not a valid tokenizer: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },
    /// `tokenizer_config.json` is not valid JSON or has a field of the wrong shape.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The chat template does not compile.
    #[error("{path}: field `chat_template`: {source}")]
    Template {
        /// The file.
        path: PathBuf,
        /// The template error.
        source: ChatTemplateError,
    },
}

/// Why text could not be turned into tokens.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The model has no chat template, so chat requests cannot be served.
    #[error("this model has no chat template in tokenizer_config.json; use /v1/completions")]
    NoChatTemplate,
    /// The chat template refused the messages.
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
    /// The tokenizer failed.
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
}

/// A model's tokenizer, chat template and end-of-sequence tokens.
#[derive(Debug)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    /// Prepended to completion prompts when `add_bos_token` is true and the tokenizer's own
    /// post-processor did not add it.
    prompt_bos: Option<u32>,
}

impl TextCodec {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from the model directory `dir`.
    pub fn load(dir: &Path) -> Result<Self, TokenizerLoadError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| TokenizerLoadError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|source| TokenizerLoadError::Read {
                path: config_path.clone(),
                source,
            })?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| TokenizerLoadError::Config {
                path: config_path.clone(),
                field: "(file)".into(),
                message: e.to_string(),
            })?;
        Self::from_parts(tokenizer, &config, &config_path)
    }

    /// Builds a codec from a tokenizer and the parsed `tokenizer_config.json` (read from
    /// `config_path`, named in errors).
    pub fn from_parts(
        tokenizer: Tokenizer,
        config: &Value,
        config_path: &Path,
    ) -> Result<Self, TokenizerLoadError> {
        let config_error = |field: &str, message: String| TokenizerLoadError::Config {
            path: config_path.to_path_buf(),
            field: field.into(),
            message,
        };
        let bos = special_token(config, "bos_token").map_err(|m| config_error("bos_token", m))?;
        let eos = special_token(config, "eos_token").map_err(|m| config_error("eos_token", m))?;
        let mut eos_token_ids = Vec::new();
        if let Some(eos) = &eos {
            let id = tokenizer.token_to_id(eos).ok_or_else(|| {
                config_error(
                    "eos_token",
                    format!("{eos:?} is not in the tokenizer's vocabulary"),
                )
            })?;
            eos_token_ids.push(id);
        }
        let add_bos = match config.get("add_bos_token") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(config_error(
                    "add_bos_token",
                    format!("expected true or false, found {other}"),
                ));
            }
        };
        let prompt_bos = match (&bos, add_bos) {
            (Some(bos), true) => Some(tokenizer.token_to_id(bos).ok_or_else(|| {
                config_error(
                    "bos_token",
                    format!("{bos:?} is not in the tokenizer's vocabulary"),
                )
            })?),
            (None, true) => {
                return Err(config_error(
                    "add_bos_token",
                    "true, but there is no `bos_token`".into(),
                ));
            }
            (_, false) => None,
        };
        let chat_template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(source)) => Some(source.clone()),
            // A list of named templates: the one named "default" serves chat.
            Some(Value::Array(list)) => Some(
                list.iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        config_error(
                            "chat_template",
                            "a list without a template named \"default\"".into(),
                        )
                    })?
                    .to_string(),
            ),
            Some(other) => {
                return Err(config_error(
                    "chat_template",
                    format!("expected a string or a list, found {other}"),
                ));
            }
        };
        let chat_template = chat_template
            .map(|source| {
                ChatTemplate::new(
                    source,
                    bos.clone().unwrap_or_default(),
                    eos.clone().unwrap_or_default(),
                )
            })
            .transpose()
            .map_err(|source| TokenizerLoadError::Template {
                path: config_path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            tokenizer,
            chat_template,
            eos_token_ids,
            prompt_bos,
        })
    }

    /// The underlying tokenizer (for detokenization).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokens that end a completion with `finish_reason: "stop"`.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Tokenizes a plain completion prompt, adding the special tokens the tokenizer's
    /// post-processor adds, and BOS when `add_bos_token` asks for it.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>, EncodeError> {
        let mut ids = self.encode(prompt, true)?;
        if let Some(bos) = self.prompt_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Renders chat messages with the chat template and tokenizes the result; the template
    /// places the special tokens itself, so the tokenizer adds none.
    pub fn encode_chat(&self, messages: &[TemplateMessage]) -> Result<Vec<u32>, EncodeError> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or(EncodeError::NoChatTemplate)?;
        let text = template.render(messages)?;
        self.encode(&text, false)
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EncodeError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }
}

/// A special token of `tokenizer_config.json`: a string, or an object with `content`.
fn special_token(config: &Value, field: &str) -> Result<Option<String>, String> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err("an object without a string `content`".into()),
        },
        Some(other) => Err(format!("expected a string or an object, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detokenizer::tests::byte_tokenizer;

    fn codec(config: Value) -> Result<TextCodec, TokenizerLoadError> {
        TextCodec::from_parts(
            byte_tokenizer(),
            &config,
            Path::new("tokenizer_config.json"),
        )
    }

    #[test]
    fn eos_token_as_object_resolves_to_its_id() {
        let c = codec(serde_json::json!({"eos_token": {"content": "<eos>"}})).unwrap();
        assert_eq!(c.eos_token_ids(), &[256]);
    }

    #[test]
    fn unknown_eos_token_is_an_error_naming_the_field() {
        let err = codec(serde_json::json!({"eos_token": "<nope>"})).unwrap_err();
        assert!(err.to_string().contains("`eos_token`"), "{err}");
    }

    #[test]
    fn add_bos_token_prefixes_completion_prompts_once() {
        let plain = codec(serde_json::json!({})).unwrap();
        let with_bos =
            codec(serde_json::json!({"bos_token": "<eos>", "add_bos_token": true})).unwrap();
        let text = "hé!";
        let ids = plain.encode_prompt(text).unwrap();
        assert_eq!(ids.len(), text.len());
        let mut want = vec![256];
        want.extend(&ids);
        assert_eq!(with_bos.encode_prompt(text).unwrap(), want);
        let err = codec(serde_json::json!({"add_bos_token": true})).unwrap_err();
        assert!(err.to_string().contains("`add_bos_token`"), "{err}");
    }

    #[test]
    fn chat_without_a_template_is_refused() {
        let c = codec(serde_json::json!({})).unwrap();
        let m = TemplateMessage {
            role: "user".into(),
            content: "hi".into(),
        };
        assert!(matches!(
            c.encode_chat(&[m]),
            Err(EncodeError::NoChatTemplate)
        ));
    }

    #[test]
    fn chat_encodes_the_rendered_template() {
        let c =
            codec(serde_json::json!({"chat_template": "[{{ messages[0]['content'] }}]"})).unwrap();
        let m = TemplateMessage {
            role: "user".into(),
            content: "hé".into(),
        };
        let ids = c.encode_chat(&[m]).unwrap();
        assert_eq!(c.tokenizer().decode(&ids, false).unwrap(), "[hé]");
    }
}
