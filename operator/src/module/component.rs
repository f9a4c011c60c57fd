//! The check every fetched module passes before it is published: a valid
//! WebAssembly component that exports the `wasi:http` handler. It parses
//! and validates with wasmparser only, without compiling: a mistake shows
//! on the Function in milliseconds instead of in every runtime.

use wasmparser::{ComponentExternalKind, Parser, Payload, Validator};

use super::ModuleError;

/// The interface a component must export to serve HTTP (`wasi:http/proxy`),
/// any `0.2.x` version.
const HTTP_HANDLER_PREFIX: &str = "wasi:http/incoming-handler@0.2.";

/// Placeholder origin, replaced by the fetcher with where the bytes came
/// from.
const UNKNOWN_ORIGIN: &str = "the module";

/// Checks that `wasm` is a valid WebAssembly component exporting the
/// `wasi:http/incoming-handler` interface (any `@0.2.x`), as `wasmtime
/// serve` and Sluice's runtime require.
///
/// Validation uses wasmparser's default WebAssembly features, the
/// standardised proposals; a component that validates here may still use
/// something the runtime's wasmtime has disabled, which the runtime then
/// reports.
///
/// # Errors
///
/// [`ModuleError::NotAComponent`] for a core module (saying how to make a
/// component), bytes that are not WebAssembly, or a component that does not
/// validate; [`ModuleError::NotAnHttpHandler`], listing the component's
/// exports, when the handler is not among them.
pub fn check_component(wasm: &[u8]) -> Result<(), ModuleError> {
    let not_a_component = |problem: String| ModuleError::NotAComponent {
        origin: UNKNOWN_ORIGIN.to_owned(),
        problem,
    };
    if Parser::is_core_wasm(wasm) {
        return Err(not_a_component(
            "a core WebAssembly module, not a component: build for wasm32-wasip2 or run `wasm-tools component new`"
                .to_owned(),
        ));
    }
    if !Parser::is_component(wasm) {
        return Err(not_a_component(header_problem(wasm)));
    }
    Validator::new()
        .validate_all(wasm)
        .map_err(|e| not_a_component(format!("invalid component: {}", one_line(&e.to_string()))))?;
    let exports = top_level_exports(wasm)
        .map_err(|e| not_a_component(format!("invalid component: {}", one_line(&e.to_string()))))?;
    if exports
        .iter()
        .any(|(name, kind)| *kind == ComponentExternalKind::Instance && is_http_handler(name))
    {
        return Ok(());
    }
    Err(ModuleError::NotAnHttpHandler {
        origin: UNKNOWN_ORIGIN.to_owned(),
        exports: exports
            .into_iter()
            .map(|(name, kind)| format!("{name} ({})", kind_name(kind)))
            .collect(),
    })
}

fn is_http_handler(name: &str) -> bool {
    name.strip_prefix(HTTP_HANDLER_PREFIX)
        .is_some_and(|patch| !patch.is_empty())
}

/// Why bytes that carry neither header are not WebAssembly, on one line
/// (wasmparser's own message for a bad magic number spans several).
fn header_problem(wasm: &[u8]) -> String {
    if wasm.is_empty() {
        return "not WebAssembly: it is empty".to_owned();
    }
    let head = &wasm[..wasm.len().min(8)];
    if !wasm.starts_with(b"\0asm") {
        return format!("not WebAssembly: it does not start with \"\\0asm\" but with {head:02x?}");
    }
    match Parser::new(0).parse_all(wasm).next() {
        Some(Err(e)) => format!("not WebAssembly: {}", one_line(&e.to_string())),
        _ => format!("not WebAssembly: unknown header {head:02x?}"),
    }
}

/// `text` with each run of whitespace, newlines included, as one space:
/// messages end up in a condition.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The exports of the outermost component, by name and kind; those of
/// nested components and modules are skipped.
fn top_level_exports(
    wasm: &[u8],
) -> Result<Vec<(String, ComponentExternalKind)>, wasmparser::BinaryReaderError> {
    let mut exports = Vec::new();
    // Nested modules and components come inline, each closed by its own
    // `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export?;
                    exports.push((export.name.name.to_owned(), export.kind));
                }
            }
            _ => {}
        }
    }
    Ok(exports)
}

fn kind_name(kind: ComponentExternalKind) -> &'static str {
    match kind {
        ComponentExternalKind::Module => "module",
        ComponentExternalKind::Func => "func",
        ComponentExternalKind::Value => "value",
        ComponentExternalKind::Type => "type",
        ComponentExternalKind::Instance => "instance",
        ComponentExternalKind::Component => "component",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Vec<u8> {
        let path = sluice_examples::component(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The smallest component: the 8-byte header and nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn http_handlers_pass_and_everything_else_is_named() {
        let hello = example("hello");
        let mut truncated = hello.clone();
        truncated.truncate(hello.len() / 2);
        // Ok, or the reason and a part of the message.
        type Expected<'a> = Result<(), (&'a str, &'a str)>;
        let cases: [(&str, &[u8], Expected); 9] = [
            ("hello", &hello, Ok(())),
            ("echo", &example("echo"), Ok(())),
            ("misbehave", &example("misbehave"), Ok(())),
            (
                "core module",
                b"\0asm\x01\0\0\0",
                Err(("NotAComponent", "build for wasm32-wasip2")),
            ),
            (
                "garbage",
                b"#!/bin/sh\necho hello\n",
                Err((
                    "NotAComponent",
                    "not WebAssembly: it does not start with \"\\0asm\" but with [23, 21, 2f, 62, 69, 6e, 2f, 73]",
                )),
            ),
            (
                "empty",
                b"",
                Err(("NotAComponent", "not WebAssembly: it is empty")),
            ),
            (
                "future version",
                b"\0asm\x0e\0\x01\0",
                Err(("NotAComponent", "not WebAssembly: unknown binary version")),
            ),
            (
                "truncated",
                &truncated,
                Err(("NotAComponent", "invalid component")),
            ),
            (
                "component without exports",
                EMPTY_COMPONENT,
                Err(("NotAnHttpHandler", "it exports none")),
            ),
        ];
        for (name, wasm, expected) in cases {
            match (check_component(wasm), expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err((reason, text))) => {
                    assert_eq!(e.reason(), reason, "{name}: {e}");
                    assert!(e.to_string().contains(text), "{name}: {e}");
                    assert!(!e.is_transient(), "{name}");
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_core_module_is_told_how_to_become_a_component() {
        let e = check_component(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .with_origin("configMap hello-wasm key hello.wasm");
        assert_eq!(
            e.to_string(),
            "configMap hello-wasm key hello.wasm is not a WebAssembly component: a core WebAssembly module, \
             not a component: build for wasm32-wasip2 or run `wasm-tools component new`"
        );
    }

    #[test]
    fn only_0_2_handlers_count() {
        for (name, yes) in [
            ("wasi:http/incoming-handler@0.2.0", true),
            ("wasi:http/incoming-handler@0.2.6", true),
            ("wasi:http/incoming-handler@0.2.", false),
            ("wasi:http/incoming-handler@0.3.0", false),
            ("wasi:http/incoming-handler", false),
            ("wasi:http/outgoing-handler@0.2.0", false),
        ] {
            assert_eq!(is_http_handler(name), yes, "{name}");
        }
    }

    #[test]
    fn exports_of_nested_components_are_not_the_components_own() {
        let exports = top_level_exports(&example("hello")).unwrap();
        let names: Vec<&str> = exports.iter().map(|(name, _)| name.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|name| name.starts_with("wasi:http/incoming-handler@0.2.")),
            "{names:?}"
        );
    }
}
