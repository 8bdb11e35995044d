//! One generated file of `shadowlab report`: its name and its bytes. Every table, figure and
//! listing module makes these; `report` writes them, or compares them with what is written.

/// One generated file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// File name inside the output folder.
    pub name: &'static str,
    /// Its contents.
    pub bytes: Vec<u8>,
}
