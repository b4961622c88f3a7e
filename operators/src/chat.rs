//! The SmolLM2 chat template (ChatML with a default system prompt).

/// System prompt SmolLM2's template inserts when the conversation has none.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders `messages` as `<|im_start|>role\n…<|im_end|>\n` turns, adding the default
/// system turn when the first message is not a system message, and ending with the
/// assistant's opening so the model writes the answer.
pub fn render_chat(messages: &[ChatMessage]) -> String {
    let mut out = String::new();
    if messages.first().is_none_or(|m| m.role != "system") {
        out.push_str(&format!(
            "<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
        ));
    }
    for m in messages {
        out.push_str(&format!(
            "<|im_start|>{}\n{}<|im_end|>\n",
            m.role, m.content
        ));
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// The prompt for a single user message.
pub fn render_user_prompt(user: &str) -> String {
    render_chat(&[ChatMessage::new("user", user)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_system_turn_is_added() {
        let p = render_user_prompt("Hi");
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn explicit_system_turn_replaces_default() {
        let p = render_chat(&[
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
        ]);
        assert!(p.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        assert!(!p.contains("SmolLM"));
    }
}
