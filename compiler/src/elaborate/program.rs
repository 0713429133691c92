//! Loading a root file and its imports into one table of definitions.

use super::limits;
use netc_grammar::ast::{self, Item};
use netc_grammar::{did_you_mean, Diagnostic, FileId, SourceMap, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A top-level definition.
#[derive(Clone)]
pub enum Def {
    /// A block.
    Block(Rc<ast::BlockDef>),
    /// A network.
    Network(Rc<ast::NetworkDef>),
    /// An enum type.
    Enum(Rc<ast::EnumDef>),
    /// A file constant.
    Const(Rc<ast::ConstDef>),
}

impl Def {
    /// The span of the definition's name.
    pub fn name_span(&self) -> Span {
        match self {
            Def::Block(b) => b.name.span,
            Def::Network(n) => n.name.span,
            Def::Enum(e) => e.name.span,
            Def::Const(c) => c.name.span,
        }
    }

    /// What kind of definition, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Def::Block(_) => "block",
            Def::Network(_) => "network",
            Def::Enum(_) => "enum",
            Def::Const(_) => "constant",
        }
    }
}

/// Every definition reachable from the root file.
pub struct Program {
    /// Definitions by name (one flat namespace across files).
    pub defs: HashMap<Rc<str>, Def>,
    /// Constants in load order (each may refer to earlier ones).
    pub consts: Vec<Rc<ast::ConstDef>>,
    /// Enum variant name → enum name.
    pub variants: HashMap<Rc<str>, Rc<str>>,
    /// Networks defined in the root file, in order.
    pub root_networks: Vec<Rc<str>>,
    /// The root file.
    pub root: FileId,
}

/// Where source text comes from.
pub enum Source<'a> {
    /// A file on disk; imports resolve relative to it.
    Path(&'a Path),
    /// Text in memory with a display name; imports resolve relative to `base`.
    Text {
        /// Display name.
        name: &'a str,
        /// The text.
        text: &'a str,
        /// Directory for imports.
        base: &'a Path,
    },
}

fn read_source(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a directory".into());
    }
    if meta.len() > limits::MAX_SOURCE_BYTES {
        return Err(format!(
            "it is {} bytes; source files are limited to {} bytes",
            meta.len(),
            limits::MAX_SOURCE_BYTES
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| format!("it is not UTF-8 text ({e})"))
}

impl Program {
    /// Loads the root and, transitively, its imports. Every file is parsed; all
    /// syntax and definition errors found are returned together.
    pub fn load(root: Source<'_>, sources: &mut SourceMap) -> Result<Program, Vec<Diagnostic>> {
        let (name, text, base) = match root {
            Source::Path(p) => {
                let text = read_source(p).map_err(|e| {
                    vec![
                        Diagnostic::new("netc::io", format!("cannot read `{}`: {e}", p.display()))
                            .help("check the path; netc reads UTF-8 `.net` files"),
                    ]
                })?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                (p.display().to_string(), text, base)
            }
            Source::Text { name, text, base } => {
                (name.to_string(), text.to_string(), base.to_path_buf())
            }
        };
        let root = sources.add(name, text);
        let mut prog = Program {
            defs: HashMap::new(),
            consts: Vec::new(),
            variants: HashMap::new(),
            root_networks: Vec::new(),
            root,
        };
        let mut errors = Vec::new();
        // (file, directory its imports resolve against)
        let mut queue: Vec<(FileId, PathBuf)> = vec![(root, base)];
        let mut loaded: HashMap<PathBuf, FileId> = HashMap::new();
        while let Some((file, dir)) = queue.pop() {
            let text = sources.get(file).text.clone();
            let parsed = match netc_grammar::parse(file, &text) {
                Ok(f) => f,
                Err(d) => {
                    errors.push(d);
                    continue;
                }
            };
            let mut imports = Vec::new();
            for item in parsed.items {
                match item {
                    Item::Import(imp) => imports.push(imp),
                    Item::Block(b) => prog.define(file, Def::Block(Rc::new(b)), &mut errors),
                    Item::Network(n) => prog.define(file, Def::Network(Rc::new(n)), &mut errors),
                    Item::Enum(e) => prog.define(file, Def::Enum(Rc::new(e)), &mut errors),
                    Item::Const(c) => prog.define(file, Def::Const(Rc::new(c)), &mut errors),
                }
            }
            // Imports are processed in source order.
            for imp in imports.into_iter().rev() {
                let path = dir.join(&imp.path.node);
                let canon = path.canonicalize().unwrap_or(path.clone());
                if loaded.contains_key(&canon) {
                    continue;
                }
                if sources.files().len() >= limits::MAX_FILES {
                    errors.push(
                        Diagnostic::new(
                            "netc::too_many_files",
                            format!("more than {} source files", limits::MAX_FILES),
                        )
                        .label(imp.path.span, "this import is one too many"),
                    );
                    continue;
                }
                match read_source(&path) {
                    Ok(text) => {
                        let id = sources.add(imp.path.node.clone(), text);
                        loaded.insert(canon, id);
                        let d = path.parent().map(Path::to_path_buf).unwrap_or_default();
                        queue.push((id, d));
                    }
                    Err(e) => {
                        let mut d = Diagnostic::new(
                            "netc::missing_import",
                            format!("cannot import `{}`: {e}", imp.path.node),
                        )
                        .label(imp.path.span, format!("looked for {}", path.display()));
                        let near = std::fs::read_dir(&dir).ok().map(|rd| {
                            rd.filter_map(|e| e.ok())
                                .filter_map(|e| e.file_name().into_string().ok())
                                .filter(|n| n.ends_with(".net"))
                                .collect::<Vec<_>>()
                        });
                        let hint = near.as_ref().and_then(|names| {
                            did_you_mean(&imp.path.node, names.iter().map(String::as_str))
                        });
                        d = match hint {
                            Some(h) => d.help(format!("did you mean \"{h}\"?")),
                            None => d.help("import paths are relative to the importing file"),
                        };
                        errors.push(d);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(prog)
        } else {
            Err(errors)
        }
    }

    fn define(&mut self, file: FileId, def: Def, errors: &mut Vec<Diagnostic>) {
        let name: Rc<str> = match &def {
            Def::Block(b) => b.name.node.as_str().into(),
            Def::Network(n) => n.name.node.as_str().into(),
            Def::Enum(e) => e.name.node.as_str().into(),
            Def::Const(c) => c.name.node.as_str().into(),
        };
        if let Some(prev) = self.defs.get(&name) {
            errors.push(
                Diagnostic::new(
                    "netc::duplicate_definition",
                    format!("`{name}` is defined twice"),
                )
                .label(def.name_span(), format!("this {} ...", def.kind()))
                .label(
                    prev.name_span(),
                    format!("... clashes with this {}", prev.kind()),
                )
                .help(
                    "rename one of them; blocks, networks, enums and constants share one namespace",
                ),
            );
            return;
        }
        if super::builtins::op(&name).is_some() {
            errors.push(
                Diagnostic::new(
                    "netc::duplicate_definition",
                    format!("`{name}` is a built-in op"),
                )
                .label(def.name_span(), "cannot be redefined")
                .help("choose another name"),
            );
            return;
        }
        match &def {
            Def::Enum(e) => {
                for v in &e.variants {
                    let vn: Rc<str> = v.node.as_str().into();
                    if let Some(other) = self.variants.get(&vn) {
                        errors.push(
                            Diagnostic::new(
                                "netc::duplicate_definition",
                                format!("enum variant `{vn}` is also a variant of `{other}`"),
                            )
                            .label(v.span, "defined again here")
                            .help("variant names are global; rename one"),
                        );
                    } else {
                        self.variants.insert(vn, name.clone());
                    }
                }
            }
            Def::Const(c) => self.consts.push(c.clone()),
            Def::Network(_) if file == self.root => self.root_networks.push(name.clone()),
            _ => {}
        }
        self.defs.insert(name, def);
    }
}
