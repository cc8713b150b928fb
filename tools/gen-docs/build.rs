//! Takes the clap definitions out of the two binaries' sources, so the pages and completions are made
//! from the very structs the binaries parse with, without the binaries exporting anything.
//!
//! From `src/bin/vramcap/cli.rs` and `src/bin/vramcap-run.rs` it keeps the items that derive a clap trait
//! (`Parser`, `Subcommand`, `Args`, `ValueEnum`), the functions, constants and types they name in their
//! attributes and field types (value parsers, defaults, parsed values), transitively, and the `use` lines
//! of `std`, `clap` and the `vramcap` library; it drops the rest (`main`, the modules of the binary,
//! impls, tests). Each file becomes `$OUT_DIR/<name>.rs` with a
//! `pub fn command()` that returns the parser's `clap::Command`. A definition that comes to need
//! something this leaves out fails to build here, loudly, rather than documenting another CLI.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, ToTokens};
use std::collections::BTreeSet;
use std::path::Path;

const CLAP_TRAITS: [&str; 4] = ["Parser", "Subcommand", "Args", "ValueEnum"];

fn idents(tokens: TokenStream, into: &mut BTreeSet<String>) {
    for tree in tokens {
        match tree {
            TokenTree::Ident(i) => {
                into.insert(i.to_string());
            }
            TokenTree::Group(g) => idents(g.stream(), into),
            TokenTree::Literal(_) | TokenTree::Punct(_) => {}
        }
    }
}

/// What a clap item refers to: the tokens of its attributes and of its fields' attributes and types (not
/// the fields' names, which may be any word).
fn references(attrs: &[syn::Attribute], fields: Vec<&syn::Field>, into: &mut BTreeSet<String>) {
    for attr in attrs {
        idents(attr.to_token_stream(), into);
    }
    for field in fields {
        for attr in &field.attrs {
            idents(attr.to_token_stream(), into);
        }
        idents(field.ty.to_token_stream(), into);
    }
}

/// The clap traits an item derives.
fn derives(attrs: &[syn::Attribute]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        if let syn::Meta::List(list) = &attr.meta {
            idents(list.tokens.clone(), &mut names);
        }
    }
    names.retain(|n| CLAP_TRAITS.contains(&n.as_str()));
    names
}

fn extract(source: &Path, shown: &str, out: &Path) {
    let text = std::fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let file =
        syn::parse_file(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", source.display()));
    let mut keep = vec![false; file.items.len()];
    let mut parser = None;
    let mut wanted = BTreeSet::new();
    for (i, item) in file.items.iter().enumerate() {
        let (attrs, ident, fields) = match item {
            syn::Item::Struct(s) => (
                std::borrow::Cow::Borrowed(&s.attrs[..]),
                &s.ident,
                s.fields.iter().collect(),
            ),
            syn::Item::Enum(e) => {
                // A variant's attributes count as the item's own.
                let mut attrs = e.attrs.clone();
                let mut fields = Vec::new();
                for v in &e.variants {
                    attrs.extend(v.attrs.iter().cloned());
                    fields.extend(v.fields.iter());
                }
                (std::borrow::Cow::Owned(attrs), &e.ident, fields)
            }
            _ => continue,
        };
        let traits = derives(&attrs);
        if traits.is_empty() {
            continue;
        }
        if traits.contains("Parser") {
            assert!(
                parser.replace(ident.clone()).is_none(),
                "{}: more than one clap Parser",
                source.display()
            );
        }
        keep[i] = true;
        references(&attrs, fields, &mut wanted);
    }
    let parser = parser.unwrap_or_else(|| panic!("{}: no clap Parser", source.display()));
    // Functions, constants, statics and types the kept items name, and those they name in turn.
    loop {
        let mut grew = false;
        for (i, item) in file.items.iter().enumerate() {
            let name = match item {
                syn::Item::Fn(f) => f.sig.ident.to_string(),
                syn::Item::Const(c) => c.ident.to_string(),
                syn::Item::Static(s) => s.ident.to_string(),
                syn::Item::Struct(s) => s.ident.to_string(),
                syn::Item::Enum(e) => e.ident.to_string(),
                syn::Item::Type(t) => t.ident.to_string(),
                _ => continue,
            };
            if !keep[i] && name != "main" && wanted.contains(&name) {
                keep[i] = true;
                idents(item.to_token_stream(), &mut wanted);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut body = TokenStream::new();
    for (i, item) in file.items.iter().enumerate() {
        let external_use = matches!(item, syn::Item::Use(u) if {
            let mut first = BTreeSet::new();
            if let syn::UseTree::Path(p) = &u.tree {
                first.insert(p.ident.to_string());
            }
            ["std", "clap", "vramcap_core"].iter().any(|c| first.contains(*c))
        });
        if keep[i] || external_use {
            item.to_tokens(&mut body);
        }
    }
    let generated = quote! {
        #body
        /// The `clap::Command` the binary parses its arguments with.
        pub fn command() -> clap::Command {
            <#parser as clap::CommandFactory>::command()
        }
    };
    let header = format!("// Generated by tools/gen-docs/build.rs from {shown}: do not edit.\n");
    std::fs::write(out, header + &generated.to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// The root package's version (`[package] version`), which the binaries print.
fn root_version(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).expect("read the root Cargo.toml");
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("version") {
                let v = v.trim_start().trim_start_matches('=').trim();
                return v.trim_matches('"').to_string();
            }
        }
    }
    panic!("{}: no [package] version", manifest.display());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for (shown, name) in [
        ("src/bin/vramcap/cli.rs", "vramcap_cli.rs"),
        ("src/bin/vramcap-run.rs", "vramcap_run_cli.rs"),
    ] {
        let source = root.join(shown);
        println!("cargo:rerun-if-changed={}", source.display());
        extract(&source, shown, &out.join(name));
    }
    let manifest = root.join("Cargo.toml");
    println!("cargo:rerun-if-changed={}", manifest.display());
    println!(
        "cargo:rustc-env=VRAMCAP_VERSION={}",
        root_version(&manifest)
    );
}
