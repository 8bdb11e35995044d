//! Host detection for `shadowlab info`.
