//! A gob encoder and decoder for exactly the types the mesh uses.
