//! Landmark sets: which anatomical points a dataset annotates, in which order.
//!
//! The order of a set is the order of the model's output channels, so it is part of a trained
//! model's identity. Symbols follow Aariz (soft-tissue points end in a backtick); ISBI 2015's 19
//! landmarks are all Aariz landmarks and use the same symbols.

/// An ordered list of landmark symbols with human-readable titles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandmarkSet {
    pub symbols: Vec<String>,
    pub titles: Vec<String>,
}

/// Aariz's 29 landmarks, in the order of its JSON files: (symbol, title).
const AARIZ: [(&str, &str); 29] = [
    ("A", "A-point"),
    ("ANS", "Anterior Nasal Spine"),
    ("B", "B-point"),
    ("Me", "Menton"),
    ("N", "Nasion"),
    ("Or", "Orbitale"),
    ("Pog", "Pogonion"),
    ("PNS", "Posterior Nasal Spine"),
    ("Pn", "Pronasale"),
    ("R", "Ramus"),
    ("S", "Sella"),
    ("Ar", "Articulare"),
    ("Co", "Condylion"),
    ("Gn", "Gnathion"),
    ("Go", "Gonion"),
    ("Po", "Porion"),
    ("LPM", "Lower 2nd PM Cusp Tip"),
    ("LIT", "Lower Incisor Tip"),
    ("LMT", "Lower Molar Cusp Tip"),
    ("UPM", "Upper 2nd PM Cusp Tip"),
    ("UIA", "Upper Incisor Apex"),
    ("UIT", "Upper Incisor Tip"),
    ("UMT", "Upper Molar Cusp Tip"),
    ("LIA", "Lower Incisor Apex"),
    ("Li", "Labrale inferius"),
    ("Ls", "Labrale superius"),
    ("N`", "Soft Tissue Nasion"),
    ("Pog`", "Soft Tissue Pogonion"),
    ("Sn", "Subnasale"),
];

/// ISBI 2015's 19 landmarks in the challenge's order, under their Aariz symbols. (The
/// challenge's own names differ for some: A = subspinale, B = supramentale, LIT / UIT = lower /
/// upper incisal incision, Ls / Li = upper / lower lip.)
const ISBI: [&str; 19] = [
    "S", "N", "Or", "Po", "A", "B", "Pog", "Me", "Gn", "Go", "LIT", "UIT", "Ls", "Li", "Sn", "Pog`", "PNS", "ANS", "Ar",
];

impl LandmarkSet {
    fn from_table(table: &[(&str, &str)]) -> Self {
        LandmarkSet {
            symbols: table.iter().map(|(s, _)| s.to_string()).collect(),
            titles: table.iter().map(|(_, t)| t.to_string()).collect(),
        }
    }

    /// The 29 Aariz landmarks.
    pub fn aariz29() -> Self {
        Self::from_table(&AARIZ)
    }

    /// The 19 ISBI 2015 landmarks, under their Aariz symbols and titles, so a CSV dataset
    /// with these columns has exactly this set.
    pub fn isbi19() -> Self {
        Self::from_symbols(&ISBI).expect("ISBI symbols are Aariz symbols")
    }

    /// A set made of the given symbols, in that order; every symbol must be an Aariz symbol (the
    /// error lists the known ones). Titles are Aariz's.
    pub fn from_symbols<S: AsRef<str>>(symbols: &[S]) -> anyhow::Result<Self> {
        let mut set = LandmarkSet {
            symbols: Vec::new(),
            titles: Vec::new(),
        };
        for symbol in symbols {
            let symbol = symbol.as_ref();
            let Some(title) = aariz_title(symbol) else {
                anyhow::bail!("unknown landmark symbol '{symbol}'; known symbols: {}", known_symbols());
            };
            if set.index_of(symbol).is_some() {
                anyhow::bail!("landmark symbol '{symbol}' appears twice");
            }
            set.symbols.push(symbol.to_string());
            set.titles.push(title.to_string());
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Position of `symbol` in this set (exact, case-sensitive match: `N` and `N`` differ).
    pub fn index_of(&self, symbol: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s == symbol)
    }
}

/// The Aariz title of a symbol, if it is one.
pub fn aariz_title(symbol: &str) -> Option<&'static str> {
    AARIZ.iter().find(|(s, _)| *s == symbol).map(|(_, t)| *t)
}

/// All Aariz symbols, comma-separated, for error messages.
pub fn known_symbols() -> String {
    AARIZ.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
}
