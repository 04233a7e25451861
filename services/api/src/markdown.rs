//! Server-side markdown: message content and profile "about" text as a flat
//! list of safe tokens (PROTOCOL.md §1.10).
//!
//! Clients never parse markdown; they render these tokens and reject any
//! list that breaks the caps. So the safe subset is decided here, once:
//!
//! - plain `CommonMark` through `pulldown-cmark`, with no extensions;
//! - raw HTML is dropped, and so are images, whose alt text stays as plain
//!   text so that `![diagram](…)` still says something;
//! - links survive only for `http`, `https` and `mailto` (any case); any
//!   other link keeps its text but loses its link tokens, and so does a link
//!   whose href is over [`MAX_INLINE_BYTES`] (cutting it would point it
//!   somewhere else). `<user@example.com>` becomes a `mailto:` link;
//! - bare `http://`, `https://` and `mailto:` runs in text become links, minus
//!   trailing `)]}.,!?;:`. Text inside a link or an image is never
//!   autolinked, so links do not nest;
//! - a code block's language is the first word of its info string,
//!   lowercased, when it matches `[A-Za-z0-9_.+-]{1,32}`; else `null`.
//!   Indented code blocks are fenced blocks without a language;
//! - caps: at most [`MAX_TOKENS`] tokens, text and inline code cut to
//!   [`MAX_INLINE_BYTES`] on a character boundary, at most
//!   [`MAX_FENCED_BLOCKS`] code blocks of [`MAX_FENCED_BYTES`] each (later
//!   blocks are dropped whole).
//!
//! When the token cap is reached the rest of the source is dropped, and the
//! blocks still open are closed, so the output is always balanced.

use filament_proto::v1::markdown_token::Kind;
use filament_proto::v1::{FencedCode, MarkdownMarker, MarkdownToken};
use pulldown_cmark::{
    CodeBlockKind, Event, HeadingLevel, LinkType, Options, Parser, Tag, TagEnd, TextMergeStream,
};

/// Tokens per document.
pub const MAX_TOKENS: usize = 4096;
/// Bytes per text, inline code or href.
pub const MAX_INLINE_BYTES: usize = 4096;
/// Code blocks per document.
pub const MAX_FENCED_BLOCKS: usize = 64;
/// Bytes per code block.
pub const MAX_FENCED_BYTES: usize = 16_384;
/// Bytes of a code block's language.
const MAX_LANGUAGE_BYTES: usize = 32;

/// The prefixes that start a bare autolink, matched case-insensitively.
const AUTOLINK_PREFIXES: [&str; 3] = ["http://", "https://", "mailto:"];
/// Punctuation that usually ends a sentence rather than a URL.
const AUTOLINK_TRAILING: [char; 9] = [')', ']', '}', '.', ',', '!', '?', ';', ':'];
/// The link schemes that clients may follow.
const LINK_SCHEMES: [&str; 3] = ["http", "https", "mailto"];

/// Tokenizes `source`. Never fails: anything outside the safe subset is
/// dropped, and the caps bound the output whatever the input.
#[must_use]
pub fn tokenize(source: &str) -> Vec<MarkdownToken> {
    let mut tokenizer = Tokenizer::default();
    for event in TextMergeStream::new(Parser::new_ext(source, Options::empty())) {
        if tokenizer.apply(event).is_err() {
            break;
        }
    }
    tokenizer.finish()
}

/// The token cap was reached; nothing more can be added.
struct Full;

/// A code block being read.
enum CodeBlock {
    Kept {
        language: Option<String>,
        code: String,
    },
    /// Over the block cap: its content is dropped, not turned into text.
    Dropped,
}

#[derive(Default)]
struct Tokenizer {
    tokens: Vec<MarkdownToken>,
    /// The end tokens owed for the start tokens emitted so far, innermost
    /// last. They count against the cap from the moment their start is
    /// emitted, which is how truncation stays balanced.
    open: Vec<MarkdownToken>,
    /// One entry per enclosing link or image: whether it emitted a
    /// `link_start` (and so owes a `link_end`).
    links: Vec<bool>,
    code_block: Option<CodeBlock>,
    fenced_blocks: usize,
}

impl Tokenizer {
    fn apply(&mut self, event: Event<'_>) -> Result<(), Full> {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) => self.text(&text),
            Event::Code(code) => {
                self.leaf(Kind::Code(truncate(&code, MAX_INLINE_BYTES).to_owned()))
            }
            Event::SoftBreak => self.leaf(marker(MarkdownMarker::SoftBreak)),
            Event::HardBreak => self.leaf(marker(MarkdownMarker::HardBreak)),
            // Raw HTML, thematic breaks, and what only extensions produce.
            _ => Ok(()),
        }
    }

    fn start(&mut self, tag: Tag<'_>) -> Result<(), Full> {
        match tag {
            Tag::Paragraph => self.open_block(
                marker(MarkdownMarker::ParagraphStart),
                MarkdownMarker::ParagraphEnd,
            ),
            Tag::Heading { level, .. } => self.open_block(
                Kind::HeadingStartLevel(heading_level(level)),
                MarkdownMarker::HeadingEnd,
            ),
            Tag::Emphasis => self.open_block(
                marker(MarkdownMarker::EmphasisStart),
                MarkdownMarker::EmphasisEnd,
            ),
            Tag::Strong => self.open_block(
                marker(MarkdownMarker::StrongStart),
                MarkdownMarker::StrongEnd,
            ),
            Tag::List(first_number) => self.open_block(
                Kind::ListStartOrdered(first_number.is_some()),
                MarkdownMarker::ListEnd,
            ),
            Tag::Item => self.open_block(
                marker(MarkdownMarker::ListItemStart),
                MarkdownMarker::ListItemEnd,
            ),
            Tag::Link {
                link_type,
                dest_url,
                ..
            } => self.open_link(link_type, &dest_url),
            Tag::Image { .. } => {
                self.links.push(false);
                Ok(())
            }
            Tag::CodeBlock(kind) => {
                self.open_code_block(&kind);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn end(&mut self, tag: TagEnd) -> Result<(), Full> {
        match tag {
            TagEnd::Paragraph
            | TagEnd::Heading(_)
            | TagEnd::Emphasis
            | TagEnd::Strong
            | TagEnd::List(_)
            | TagEnd::Item => self.close_block(),
            TagEnd::Link | TagEnd::Image => self.close_link(),
            TagEnd::CodeBlock => return self.close_code_block(),
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), Full> {
        if let Some(block) = &mut self.code_block {
            if let CodeBlock::Kept { code, .. } = block {
                let room = MAX_FENCED_BYTES.saturating_sub(code.len());
                code.push_str(truncate(text, room));
            }
            return Ok(());
        }
        if self.links.is_empty() {
            self.text_with_autolinks(text)
        } else {
            self.plain_text(text)
        }
    }

    fn text_with_autolinks(&mut self, text: &str) -> Result<(), Full> {
        let mut rest = text;
        while let Some((start, end)) = find_autolink(rest) {
            self.plain_text(&rest[..start])?;
            self.autolink(&rest[start..end])?;
            rest = &rest[end..];
        }
        self.plain_text(rest)
    }

    fn autolink(&mut self, url: &str) -> Result<(), Full> {
        if url.len() > MAX_INLINE_BYTES {
            return self.plain_text(url);
        }
        self.reserve(3)?;
        self.push(Kind::LinkStartHref(url.to_owned()));
        self.push(Kind::Text(url.to_owned()));
        self.push(marker(MarkdownMarker::LinkEnd));
        Ok(())
    }

    fn plain_text(&mut self, text: &str) -> Result<(), Full> {
        if text.is_empty() {
            return Ok(());
        }
        // Dropped HTML and images split text that reads as one run; joining
        // it back saves tokens and renders the same.
        if let Some(Kind::Text(last)) = self.tokens.last_mut().and_then(|t| t.kind.as_mut()) {
            let room = MAX_INLINE_BYTES.saturating_sub(last.len());
            last.push_str(truncate(text, room));
            return Ok(());
        }
        self.leaf(Kind::Text(truncate(text, MAX_INLINE_BYTES).to_owned()))
    }

    fn open_link(&mut self, link_type: LinkType, destination: &str) -> Result<(), Full> {
        let href = match link_type {
            // CommonMark's `<user@example.com>`: the destination has no scheme.
            LinkType::Email => format!("mailto:{}", destination.trim()),
            _ => destination.trim().to_owned(),
        };
        let kept = is_allowed_href(&href);
        if kept {
            self.open_block(Kind::LinkStartHref(href), MarkdownMarker::LinkEnd)?;
        }
        self.links.push(kept);
        Ok(())
    }

    /// Ends a link or an image; only a kept link owes a `link_end`.
    fn close_link(&mut self) {
        if self.links.pop() == Some(true) {
            self.close_block();
        }
    }

    fn open_code_block(&mut self, kind: &CodeBlockKind<'_>) {
        let block = if self.fenced_blocks < MAX_FENCED_BLOCKS {
            let language = match kind {
                CodeBlockKind::Fenced(info) => code_language(info),
                CodeBlockKind::Indented => None,
            };
            CodeBlock::Kept {
                language,
                code: String::new(),
            }
        } else {
            CodeBlock::Dropped
        };
        self.code_block = Some(block);
    }

    fn close_code_block(&mut self) -> Result<(), Full> {
        let Some(CodeBlock::Kept { language, code }) = self.code_block.take() else {
            return Ok(());
        };
        self.fenced_blocks += 1;
        self.leaf(Kind::FencedCode(FencedCode { language, code }))
    }

    /// Emits a start token and owes its end token.
    fn open_block(&mut self, start: Kind, end: MarkdownMarker) -> Result<(), Full> {
        self.reserve(2)?;
        self.push(start);
        self.open.push(token(marker(end)));
        Ok(())
    }

    /// Pays the innermost end token owed.
    fn close_block(&mut self) {
        if let Some(end) = self.open.pop() {
            self.tokens.push(end);
        }
    }

    fn leaf(&mut self, kind: Kind) -> Result<(), Full> {
        self.reserve(1)?;
        self.push(kind);
        Ok(())
    }

    /// Checks that `count` more tokens fit next to the end tokens owed.
    fn reserve(&self, count: usize) -> Result<(), Full> {
        if self.tokens.len() + self.open.len() + count <= MAX_TOKENS {
            Ok(())
        } else {
            Err(Full)
        }
    }

    fn push(&mut self, kind: Kind) {
        self.tokens.push(token(kind));
    }

    /// The tokens, with every block still open closed (only after the cap
    /// cut the source short).
    fn finish(mut self) -> Vec<MarkdownToken> {
        while !self.open.is_empty() {
            self.close_block();
        }
        self.tokens
    }
}

fn token(kind: Kind) -> MarkdownToken {
    MarkdownToken { kind: Some(kind) }
}

fn marker(marker: MarkdownMarker) -> Kind {
    Kind::Marker(i32::from(marker))
}

fn heading_level(level: HeadingLevel) -> u32 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a link may be kept: its scheme is http, https or mailto, and it
/// fits the inline cap.
fn is_allowed_href(href: &str) -> bool {
    if href.len() > MAX_INLINE_BYTES {
        return false;
    }
    href.split_once(':').is_some_and(|(scheme, _)| {
        LINK_SCHEMES
            .iter()
            .any(|allowed| scheme.eq_ignore_ascii_case(allowed))
    })
}

/// The first bare link in `text`, as a byte range: from a prefix of
/// [`AUTOLINK_PREFIXES`] up to the next whitespace, minus trailing
/// punctuation. A prefix with nothing after it is not a link.
fn find_autolink(text: &str) -> Option<(usize, usize)> {
    text.char_indices().find_map(|(start, _)| {
        let rest = &text[start..];
        let prefix = AUTOLINK_PREFIXES.iter().find(|prefix| {
            rest.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        })?;
        let run_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let url = rest[..run_end].trim_end_matches(AUTOLINK_TRAILING);
        (url.len() > prefix.len()).then_some((start, start + url.len()))
    })
}

/// A code block's language: the first word of the info string, lowercased,
/// if it is `[A-Za-z0-9_.+-]{1,32}`.
fn code_language(info: &str) -> Option<String> {
    let word = info.split_whitespace().next()?;
    let valid = word.len() <= MAX_LANGUAGE_BYTES
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    valid.then(|| word.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compact rendering of tokens for readable assertions:
    /// `ps text(hi) pe`.
    fn render(tokens: &[MarkdownToken]) -> String {
        tokens
            .iter()
            .map(
                |token| match token.kind.as_ref().expect("every token has a kind") {
                    Kind::Marker(raw) => {
                        let marker = MarkdownMarker::try_from(*raw).expect("known marker");
                        short_marker(marker).to_owned()
                    }
                    Kind::HeadingStartLevel(level) => format!("h{level}"),
                    Kind::ListStartOrdered(true) => "ol".to_owned(),
                    Kind::ListStartOrdered(false) => "ul".to_owned(),
                    Kind::LinkStartHref(href) => format!("a({href})"),
                    Kind::Text(text) => format!("text({text})"),
                    Kind::Code(code) => format!("code({code})"),
                    Kind::FencedCode(block) => format!(
                        "fenced({}|{})",
                        block.language.as_deref().unwrap_or("null"),
                        block.code
                    ),
                },
            )
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn short_marker(marker: MarkdownMarker) -> &'static str {
        match marker {
            MarkdownMarker::Unspecified => "?",
            MarkdownMarker::ParagraphStart => "ps",
            MarkdownMarker::ParagraphEnd => "pe",
            MarkdownMarker::HeadingEnd => "/h",
            MarkdownMarker::EmphasisStart => "em",
            MarkdownMarker::EmphasisEnd => "/em",
            MarkdownMarker::StrongStart => "strong",
            MarkdownMarker::StrongEnd => "/strong",
            MarkdownMarker::ListEnd => "/list",
            MarkdownMarker::ListItemStart => "li",
            MarkdownMarker::ListItemEnd => "/li",
            MarkdownMarker::LinkEnd => "/a",
            MarkdownMarker::SoftBreak => "soft",
            MarkdownMarker::HardBreak => "hard",
        }
    }

    fn tokens_of(source: &str) -> String {
        render(&tokenize(source))
    }

    /// Every start token is closed, in order: the output is a tree.
    fn assert_balanced(tokens: &[MarkdownToken]) {
        let mut open = Vec::new();
        for token in tokens {
            let closer = match token.kind.as_ref().expect("kind") {
                Kind::HeadingStartLevel(_) => Some(MarkdownMarker::HeadingEnd),
                Kind::ListStartOrdered(_) => Some(MarkdownMarker::ListEnd),
                Kind::LinkStartHref(_) => Some(MarkdownMarker::LinkEnd),
                Kind::Marker(raw) => {
                    let marker = MarkdownMarker::try_from(*raw).expect("known marker");
                    match marker {
                        MarkdownMarker::ParagraphStart => Some(MarkdownMarker::ParagraphEnd),
                        MarkdownMarker::EmphasisStart => Some(MarkdownMarker::EmphasisEnd),
                        MarkdownMarker::StrongStart => Some(MarkdownMarker::StrongEnd),
                        MarkdownMarker::ListItemStart => Some(MarkdownMarker::ListItemEnd),
                        MarkdownMarker::ParagraphEnd
                        | MarkdownMarker::HeadingEnd
                        | MarkdownMarker::EmphasisEnd
                        | MarkdownMarker::StrongEnd
                        | MarkdownMarker::ListEnd
                        | MarkdownMarker::ListItemEnd
                        | MarkdownMarker::LinkEnd => {
                            assert_eq!(open.pop(), Some(marker), "mismatched end");
                            None
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            open.extend(closer);
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
    }

    #[test]
    fn plain_text_is_one_paragraph() {
        assert_eq!(tokens_of("hello world"), "ps text(hello world) pe");
        assert_eq!(tokens_of(""), "");
    }

    #[test]
    fn block_and_inline_structure() {
        assert_eq!(
            tokens_of("## Title\n\n*a* **b** `c`"),
            "h2 text(Title) /h ps em text(a) /em text( ) strong text(b) /strong text( ) code(c) pe"
        );
        assert_eq!(
            tokens_of("- one\n- two"),
            "ul li text(one) /li li text(two) /li /list"
        );
        assert_eq!(tokens_of("3. three"), "ol li text(three) /li /list");
        assert_eq!(
            tokens_of("a\nb  \nc"),
            "ps text(a) soft text(b) hard text(c) pe"
        );
    }

    #[test]
    fn unsupported_blocks_keep_their_text() {
        assert_eq!(tokens_of("> quoted"), "ps text(quoted) pe");
        assert_eq!(tokens_of("a\n\n---\n\nb"), "ps text(a) pe ps text(b) pe");
        // No extensions: GFM strikethrough and tables stay literal text.
        assert_eq!(tokens_of("~~x~~"), "ps text(~~x~~) pe");
    }

    #[test]
    fn html_is_dropped() {
        assert_eq!(tokens_of("a <b>bold</b> c"), "ps text(a bold c) pe");
        assert_eq!(tokens_of("<div>\n<script>alert(1)</script>\n</div>"), "");
    }

    #[test]
    fn images_are_dropped_but_their_alt_text_stays() {
        assert_eq!(
            tokens_of("see ![a diagram](https://example.com/d.png)"),
            "ps text(see a diagram) pe"
        );
        // Alt text is not autolinked either.
        assert_eq!(
            tokens_of("![https://example.com](x.png)"),
            "ps text(https://example.com) pe"
        );
    }

    #[test]
    fn links_are_kept_only_for_safe_schemes() {
        assert_eq!(
            tokens_of("[docs](https://example.com/a)"),
            "ps a(https://example.com/a) text(docs) /a pe"
        );
        assert_eq!(
            tokens_of("[x](HTTP://EXAMPLE.COM)"),
            "ps a(HTTP://EXAMPLE.COM) text(x) /a pe"
        );
        assert_eq!(
            tokens_of("[mail](MailTo:a@example.com)"),
            "ps a(MailTo:a@example.com) text(mail) /a pe"
        );
        assert_eq!(tokens_of("[x](javascript:alert(1))"), "ps text(x) pe");
        assert_eq!(tokens_of("[x](data:text/html,hi)"), "ps text(x) pe");
        assert_eq!(tokens_of("[x](/relative/path)"), "ps text(x) pe");
        assert_eq!(
            tokens_of("<ftp://example.com>"),
            "ps text(ftp://example.com) pe"
        );
    }

    #[test]
    fn commonmark_autolinks_become_links() {
        assert_eq!(
            tokens_of("<https://example.com>"),
            "ps a(https://example.com) text(https://example.com) /a pe"
        );
        assert_eq!(
            tokens_of("<a@example.com>"),
            "ps a(mailto:a@example.com) text(a@example.com) /a pe"
        );
    }

    #[test]
    fn bare_urls_are_autolinked_without_trailing_punctuation() {
        assert_eq!(
            tokens_of("see https://example.com/x)."),
            "ps text(see ) a(https://example.com/x) text(https://example.com/x) /a text().) pe"
        );
        assert_eq!(
            tokens_of("HTTP://EXAMPLE.COM, and mailto:a@example.com!"),
            "ps a(HTTP://EXAMPLE.COM) text(HTTP://EXAMPLE.COM) /a text(, and ) \
             a(mailto:a@example.com) text(mailto:a@example.com) /a text(!) pe"
        );
        assert_eq!(
            tokens_of("(http://a.example/p?q=1;]}"),
            "ps text(() a(http://a.example/p?q=1) text(http://a.example/p?q=1) /a text(;]}) pe"
        );
    }

    #[test]
    fn a_bare_prefix_is_not_a_link() {
        assert_eq!(tokens_of("http:// alone"), "ps text(http:// alone) pe");
        assert_eq!(tokens_of("mailto:."), "ps text(mailto:.) pe");
        assert_eq!(
            tokens_of("ftp://example.com"),
            "ps text(ftp://example.com) pe"
        );
    }

    #[test]
    fn no_autolinks_in_code_or_links() {
        assert_eq!(
            tokens_of("`https://x.example`"),
            "ps code(https://x.example) pe"
        );
        assert_eq!(
            tokens_of("```\nhttps://x.example\n```"),
            "fenced(null|https://x.example\n)"
        );
        assert_eq!(
            tokens_of("[see https://x.example](https://y.example)"),
            "ps a(https://y.example) text(see https://x.example) /a pe"
        );
        assert_eq!(
            tokens_of("[see https://x.example](javascript:x)"),
            "ps text(see https://x.example) pe"
        );
    }

    #[test]
    fn code_block_languages() {
        assert_eq!(
            tokens_of("```Rust\nfn main() {}\n```"),
            "fenced(rust|fn main() {}\n)"
        );
        assert_eq!(tokens_of("```c++ linenos\nx\n```"), "fenced(c++|x\n)");
        assert_eq!(
            tokens_of("~~~objective-c.v2_x\nx\n~~~"),
            "fenced(objective-c.v2_x|x\n)"
        );
        assert_eq!(tokens_of("```c#\nx\n```"), "fenced(null|x\n)");
        assert_eq!(tokens_of("```\nx\n```"), "fenced(null|x\n)");
        let long = "a".repeat(MAX_LANGUAGE_BYTES + 1);
        assert_eq!(tokens_of(&format!("```{long}\nx\n```")), "fenced(null|x\n)");
        let longest = "A".repeat(MAX_LANGUAGE_BYTES);
        assert_eq!(
            tokens_of(&format!("```{longest}\nx\n```")),
            format!("fenced({}|x\n)", longest.to_ascii_lowercase())
        );
        assert_eq!(tokens_of("    indented\n"), "fenced(null|indented\n)");
    }

    #[test]
    fn text_and_inline_code_are_cut_on_a_char_boundary() {
        // 'é' is two bytes: the cap falls in the middle of one.
        let source = format!("a{}", "é".repeat(MAX_INLINE_BYTES));
        let tokens = tokenize(&source);
        let Some(Kind::Text(text)) = tokens[1].kind.as_ref() else {
            panic!("expected text, got {tokens:?}");
        };
        assert_eq!(text.len(), MAX_INLINE_BYTES - 1);
        assert!(text.starts_with('a') && text.ends_with('é'));

        let code = format!("`{}`", "x".repeat(MAX_INLINE_BYTES + 10));
        let tokens = tokenize(&code);
        let Some(Kind::Code(code)) = tokens[1].kind.as_ref() else {
            panic!("expected code, got {tokens:?}");
        };
        assert_eq!(code.len(), MAX_INLINE_BYTES);
    }

    #[test]
    fn overlong_hrefs_drop_the_link_not_the_text() {
        let href = format!("https://example.com/{}", "p".repeat(MAX_INLINE_BYTES));
        assert_eq!(tokens_of(&format!("[x]({href})")), "ps text(x) pe");
        let tokens = tokenize(&href);
        assert_eq!(tokens.len(), 3, "paragraph with one text token");
        assert!(matches!(tokens[1].kind, Some(Kind::Text(_))));
    }

    #[test]
    fn code_blocks_are_capped_in_size_and_number() {
        let big = format!("```\n{}\n```", "é".repeat(MAX_FENCED_BYTES));
        let tokens = tokenize(&big);
        let Some(Kind::FencedCode(block)) = tokens[0].kind.as_ref() else {
            panic!("expected a code block, got {tokens:?}");
        };
        assert_eq!(block.code.len(), MAX_FENCED_BYTES);

        let many = (0..MAX_FENCED_BLOCKS + 3)
            .map(|n| format!("```\nblock {n}\n```\n\n"))
            .collect::<Vec<_>>()
            .concat();
        let blocks: Vec<_> = tokenize(&many)
            .into_iter()
            .filter(|token| matches!(token.kind, Some(Kind::FencedCode(_))))
            .collect();
        assert_eq!(blocks.len(), MAX_FENCED_BLOCKS);
        // Later blocks vanish whole: their code does not leak in as text.
        assert!(!tokens_of(&many).contains(&format!("block {MAX_FENCED_BLOCKS}")));
    }

    #[test]
    fn token_cap_truncates_to_a_balanced_list() {
        let sources = [
            "*a* ".repeat(2000),
            "- x\n".repeat(3000),
            // Nested lists: every `- ` opens two blocks.
            format!("{}x", "- ".repeat(3000)),
            "[l](https://example.com) ".repeat(2000),
            "https://example.com ".repeat(2000),
        ];
        for source in sources {
            let tokens = tokenize(&source);
            assert!(tokens.len() <= MAX_TOKENS, "{} tokens", tokens.len());
            assert!(
                tokens.len() > MAX_TOKENS - 8,
                "cap not reached: {}",
                tokens.len()
            );
            assert_balanced(&tokens);
        }
    }

    #[test]
    fn ordinary_documents_are_balanced() {
        let source = "# T\n\n1. *a [b](https://x.example) c*\n   - **d** e\n\n> q https://y.example\n\n```py\nx\n```";
        let tokens = tokenize(source);
        assert_balanced(&tokens);
        assert_eq!(
            render(&tokens),
            "h1 text(T) /h \
             ol li em text(a ) a(https://x.example) text(b) /a text( c) /em \
             ul li strong text(d) /strong text( e) /li /list /li /list \
             ps text(q ) a(https://y.example) text(https://y.example) /a pe \
             fenced(py|x\n)"
        );
    }
}
