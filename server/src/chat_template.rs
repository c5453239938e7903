//! Renders chat messages into a prompt with the model's own Jinja chat template
//! (`tokenizer_config.json` → `chat_template`), with Python-compatible string methods.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

/// One chat message as the template sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text of the message.
    pub content: String,
}

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template source does not parse.
    #[error("chat template does not parse: {0}")]
    Syntax(#[source] minijinja::Error),
    /// The template raised an error for these messages (e.g. roles out of order).
    #[error("chat template rejected the messages: {0}")]
    Render(String),
}

/// A compiled chat template plus the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the strings the template may insert.
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Hugging Face templates signal bad input with `raise_exception(msg)`.
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(ChatTemplateError::Syntax)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages` and the cue for the assistant's turn.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ChatTemplateError::Render(describe(&e)))
    }
}

/// The message a template error carries, without minijinja's source-location decoration
/// when the template itself raised it.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_a_template_using_python_methods_and_special_tokens() {
        let source = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<U>{{ m['content'].strip() }}{% else %}<A>{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}<A>{% endif %}";
        let t = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        let out = t
            .render(&[
                msg("user", "  hi  "),
                msg("assistant", "yo"),
                msg("user", "x"),
            ])
            .unwrap();
        assert_eq!(out, "<s><U>hi<A>yo</s><U>x<A>");
    }

    #[test]
    fn raise_exception_becomes_a_render_error_with_its_message() {
        let source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        let err = t.render(&[msg("assistant", "a")]).unwrap_err();
        assert!(
            err.to_string().contains("first message must be user"),
            "{err}"
        );
        assert_eq!(t.render(&[msg("user", "a")]).unwrap(), "ok");
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        let err = ChatTemplate::new("{% for %}".into(), String::new(), String::new()).unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)));
    }
}
