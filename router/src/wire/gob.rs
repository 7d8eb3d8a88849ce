//! A gob encoder and decoder for exactly the types the mesh uses.
//!
//! Go's `encoding/gob` stream is a sequence of messages, each `uint(length) int(typeId) body`.
//! A negative type id defines type `-id` with a `wireType` struct as the body; a positive id
//! carries a value of that type. Type ids from 64 up are chosen by the sending process, so the
//! decoder never assumes them: it keeps the definitions it has seen in [`Types`].
//!
//! Encodings (all checked against the Weave Net 2.8.1 captures):
//! - unsigned: below 128 one byte, else the negated byte count then big-endian bytes;
//! - signed: `u = v << 1` for `v >= 0`, `u = (!v << 1) | 1` otherwise, then as unsigned;
//! - bool: unsigned 0/1; float: the IEEE bits byte-reversed, as unsigned;
//! - string, `[]byte`, `GobEncoder` output: unsigned length then the bytes;
//! - struct: `(field delta, value)*` then `0`; zero-valued fields are omitted;
//! - slice, array: unsigned count then the elements (every element, zero or not);
//! - map: unsigned count then key, element, key, element, ...;
//! - a top-level value that is not a struct is preceded by a `0` ("singleton") delta byte.
//!
//! Decoding never panics and never allocates more than the input can justify: every length and
//! count is checked against the bytes left, nesting is bounded by [`MAX_DEPTH`], and the
//! generic [`Value`] tree by [`MAX_VALUES`] nodes per top-level value. Interface values are not
//! supported (the mesh does not use them) and give [`GobError::Unsupported`].

use std::collections::HashMap;
use std::sync::Arc;

/// Deepest nesting of structs, slices, arrays and maps the decoder follows.
pub const MAX_DEPTH: u32 = 64;

/// Most [`Value`] nodes built for one top-level value by the generic decoder.
pub const MAX_VALUES: usize = 1 << 20;

/// Errors from decoding a gob stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GobError {
    /// The data ended inside a number, string, message or value.
    #[error("gob data truncated")]
    Truncated,
    /// An unsigned integer announced more than 8 bytes.
    #[error("gob integer with invalid byte count {0:#04x}")]
    BadUint(u8),
    /// A message announced a length of zero.
    #[error("empty gob message")]
    EmptyMessage,
    /// A message body had bytes left after its value or type definition.
    #[error("{0} unused bytes at the end of a gob message")]
    ExtraData(usize),
    /// A type id outside what Go can send (zero, or beyond 32 bits).
    #[error("invalid gob type id {0}")]
    BadTypeId(i64),
    /// A type definition used an id reserved for Go's predefined types.
    #[error("gob type definition for reserved id {0}")]
    ReservedTypeId(i32),
    /// The same type id was defined twice in one stream.
    #[error("gob type {0} defined twice")]
    DuplicateType(i32),
    /// A value or field referred to a type id never defined in the stream.
    #[error("gob type {0} is not defined")]
    UnknownType(i32),
    /// A type the decoder does not handle (interfaces, the reserved predefined ids).
    #[error("gob type {0} is not supported")]
    Unsupported(i32),
    /// A type definition did not describe exactly one kind of type.
    #[error("malformed gob type definition: {0}")]
    BadWireType(&'static str),
    /// A top-level non-struct value did not start with the zero singleton delta.
    #[error("non-zero singleton delta {0} before a gob value")]
    BadSingletonDelta(u64),
    /// A struct field delta pointed past the struct's last field.
    #[error("gob struct field {field} out of range (struct has {count})")]
    FieldOutOfRange {
        /// The field number the deltas reached.
        field: u64,
        /// How many fields the struct type has.
        count: usize,
    },
    /// A count or length promised more elements than the bytes left can hold.
    #[error("gob count {count} exceeds the {left} bytes left")]
    CountTooLarge {
        /// The announced count or length.
        count: u64,
        /// Bytes left in the message.
        left: usize,
    },
    /// An array's element count differed from its type's length.
    #[error("gob array of length {expected} sent with {found} elements")]
    ArrayLength {
        /// Length in the array type.
        expected: u64,
        /// Count in the value.
        found: u64,
    },
    /// Nesting went deeper than [`MAX_DEPTH`].
    #[error("gob value nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A value would need more than [`MAX_VALUES`] nodes.
    #[error("gob value has more than {MAX_VALUES} parts")]
    TooManyValues,
    /// A string was not UTF-8.
    #[error("gob string is not UTF-8")]
    InvalidUtf8,
    /// A value's wire type is not the one the caller asked for.
    #[error("gob type mismatch: expected {expected}, found type {found}")]
    TypeMismatch {
        /// What the caller wanted.
        expected: &'static str,
        /// The type id on the wire.
        found: i32,
    },
}

/// A gob type id. Ids below [`TypeId::FIRST_USER`] are Go's predefined types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub i32);

impl TypeId {
    /// `bool`.
    pub const BOOL: TypeId = TypeId(1);
    /// Any signed integer.
    pub const INT: TypeId = TypeId(2);
    /// Any unsigned integer.
    pub const UINT: TypeId = TypeId(3);
    /// Any float.
    pub const FLOAT: TypeId = TypeId(4);
    /// `[]byte`.
    pub const BYTES: TypeId = TypeId(5);
    /// `string`.
    pub const STRING: TypeId = TypeId(6);
    /// Any complex number.
    pub const COMPLEX: TypeId = TypeId(7);
    /// `interface{}` (not supported by this decoder).
    pub const INTERFACE: TypeId = TypeId(8);
    /// The first id a process may define (Go's `firstUserId`).
    pub const FIRST_USER: TypeId = TypeId(64);
}

/// One field of a struct type definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldType {
    /// The Go field name.
    pub name: Arc<str>,
    /// The field's type.
    pub id: TypeId,
}

/// A type definition received on the wire (Go's `wireType`, flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireType {
    /// A fixed-length array.
    Array {
        /// Go type name (often empty).
        name: String,
        /// Element type.
        elem: TypeId,
        /// Length.
        len: u64,
    },
    /// A slice.
    Slice {
        /// Go type name (often empty).
        name: String,
        /// Element type.
        elem: TypeId,
    },
    /// A struct.
    Struct {
        /// Go type name.
        name: String,
        /// Exported fields in order.
        fields: Vec<FieldType>,
    },
    /// A map.
    Map {
        /// Go type name (often empty).
        name: String,
        /// Key type.
        key: TypeId,
        /// Element type.
        elem: TypeId,
    },
    /// A type with its own `GobEncode`, `MarshalBinary` or `MarshalText`: opaque bytes.
    Encoded {
        /// Go type name.
        name: String,
    },
}

/// The type definitions received so far in one stream.
#[derive(Debug, Clone, Default)]
pub struct Types {
    /// Ids from 64 to 64 + [`DENSE_IDS`], where Go processes put theirs: indexed directly,
    /// because every struct, slice element and value looks its type up.
    dense: Vec<Option<WireType>>,
    /// Any other id a sender chose.
    sparse: HashMap<TypeId, WireType>,
    count: usize,
}

/// How many ids from [`TypeId::FIRST_USER`] up [`Types`] indexes directly.
const DENSE_IDS: usize = 4096;

impl Types {
    /// The definition of a user type, if it was received.
    pub fn get(&self, id: TypeId) -> Option<&WireType> {
        match dense_index(id) {
            Some(i) => self.dense.get(i)?.as_ref(),
            None => self.sparse.get(&id),
        }
    }

    /// Number of definitions received.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no definition was received.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Records a definition; `false` if `id` was already defined.
    fn insert(&mut self, id: TypeId, def: WireType) -> bool {
        let slot = match dense_index(id) {
            Some(i) => {
                if self.dense.len() <= i {
                    self.dense.resize(i + 1, None);
                }
                &mut self.dense[i]
            }
            None => {
                if self.sparse.contains_key(&id) {
                    return false;
                }
                self.sparse.insert(id, def);
                self.count += 1;
                return true;
            }
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(def);
        self.count += 1;
        true
    }

    /// Checks that `id` names a type values can be decoded as.
    fn check(&self, id: TypeId) -> Result<(), GobError> {
        match id.0 {
            1..=7 => Ok(()),
            8..=63 => Err(GobError::Unsupported(id.0)),
            _ if self.get(id).is_some() => Ok(()),
            _ => Err(GobError::UnknownType(id.0)),
        }
    }
}

fn dense_index(id: TypeId) -> Option<usize> {
    let i = id.0.checked_sub(TypeId::FIRST_USER.0)?;
    usize::try_from(i).ok().filter(|&i| i < DENSE_IDS)
}

/// A decoded gob value of any supported type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `bool`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float.
    Float(f64),
    /// A complex number (real, imaginary).
    Complex(f64, f64),
    /// `[]byte`.
    Bytes(Vec<u8>),
    /// `string`.
    String(String),
    /// A struct: the fields that were sent (zero-valued fields are omitted on the wire).
    Struct(Vec<(Arc<str>, Value)>),
    /// A slice.
    Slice(Vec<Value>),
    /// An array.
    Array(Vec<Value>),
    /// A map, entries in wire order.
    Map(Vec<(Value, Value)>),
    /// The bytes of a `GobEncoder`/`BinaryMarshaler`/`TextMarshaler` type.
    Encoded(Vec<u8>),
}

impl Value {
    /// A struct's field by name; `None` for absent (zero) fields or non-structs.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let Value::Struct(fields) = self else {
            return None;
        };
        fields.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }
}

/// A value message: its type and its undecoded body.
#[derive(Debug, Clone, Copy)]
pub struct ValueMessage<'a> {
    /// The value's type.
    pub type_id: TypeId,
    body: &'a [u8],
}

/// Reads a gob stream held in memory, message by message.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    input: Reader<'a>,
    types: Types,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `input`, a whole gob stream.
    pub fn new(input: &'a [u8]) -> Self {
        Decoder {
            input: Reader { buf: input },
            types: Types::default(),
        }
    }

    /// Whether all input has been read.
    pub fn is_at_end(&self) -> bool {
        self.input.buf.is_empty()
    }

    /// The type definitions seen so far.
    pub fn types(&self) -> &Types {
        &self.types
    }

    /// Reads type definitions up to the next value message; `None` at the end of the stream.
    pub fn next_message(&mut self) -> Result<Option<ValueMessage<'a>>, GobError> {
        while !self.input.buf.is_empty() {
            let len = self.input.uint()?;
            if len == 0 {
                return Err(GobError::EmptyMessage);
            }
            let mut body = Reader {
                buf: self.input.take(len)?,
            };
            let raw = body.int()?;
            let id = i32::try_from(raw)
                .ok()
                .filter(|&id| id != 0 && id != i32::MIN)
                .ok_or(GobError::BadTypeId(raw))?;
            if id > 0 {
                let type_id = TypeId(id);
                self.types.check(type_id)?;
                return Ok(Some(ValueMessage {
                    type_id,
                    body: body.buf,
                }));
            }
            let id = TypeId(-id);
            if id < TypeId::FIRST_USER {
                return Err(GobError::ReservedTypeId(id.0));
            }
            let def = read_wire_type(&mut body)?;
            body.finish()?;
            if !self.types.insert(id, def) {
                return Err(GobError::DuplicateType(id.0));
            }
        }
        Ok(None)
    }

    /// Reads the next value into a generic [`Value`]; `None` at the end of the stream.
    pub fn next_value(&mut self) -> Result<Option<Value>, GobError> {
        let Some(msg) = self.next_message()? else {
            return Ok(None);
        };
        let mut top = TopValue::new(&self.types, msg);
        let value = top.slot()?.to_value()?;
        top.finish()?;
        Ok(Some(value))
    }

    /// Opens the next value message for typed reading; `None` at the end of the stream.
    pub fn next_top(&mut self) -> Result<Option<TopValue<'_, 'a>>, GobError> {
        let Some(msg) = self.next_message()? else {
            return Ok(None);
        };
        Ok(Some(TopValue::new(&self.types, msg)))
    }

    /// Reads the next value, which must be a string.
    pub fn string(&mut self) -> Result<&'a str, GobError> {
        let mut top = self.next_top()?.ok_or(GobError::Truncated)?;
        let s = top.slot()?.string()?;
        top.finish()?;
        Ok(s)
    }

    /// Reads the next value, which must be an unsigned integer.
    pub fn uint(&mut self) -> Result<u64, GobError> {
        let mut top = self.next_top()?.ok_or(GobError::Truncated)?;
        let v = top.slot()?.uint()?;
        top.finish()?;
        Ok(v)
    }

    /// Reads the next value, which must be a `[]byte`.
    pub fn bytes(&mut self) -> Result<&'a [u8], GobError> {
        let mut top = self.next_top()?.ok_or(GobError::Truncated)?;
        let b = top.slot()?.bytes()?;
        top.finish()?;
        Ok(b)
    }
}

/// One top-level value message being read.
#[derive(Debug)]
pub struct TopValue<'t, 'a> {
    types: &'t Types,
    type_id: TypeId,
    r: Reader<'a>,
    opened: bool,
}

impl<'t, 'a> TopValue<'t, 'a> {
    /// Wraps a value message read from a stream whose definitions are `types`.
    pub fn new(types: &'t Types, msg: ValueMessage<'a>) -> Self {
        TopValue {
            types,
            type_id: msg.type_id,
            r: Reader { buf: msg.body },
            opened: false,
        }
    }

    /// The value's type.
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// The value itself, past the singleton delta of a non-struct. Call once.
    pub fn slot(&mut self) -> Result<Slot<'_, 'a>, GobError> {
        if std::mem::replace(&mut self.opened, true) {
            // A second read would start mid-value; refuse rather than misparse.
            return Err(GobError::TypeMismatch {
                expected: "one read per value",
                found: self.type_id.0,
            });
        }
        let is_struct = matches!(self.types.get(self.type_id), Some(WireType::Struct { .. }));
        if !is_struct {
            let delta = self.r.uint()?;
            if delta != 0 {
                return Err(GobError::BadSingletonDelta(delta));
            }
        }
        Ok(Slot {
            types: self.types,
            type_id: self.type_id,
            r: &mut self.r,
            depth: 0,
        })
    }

    /// Checks that the value used the whole message.
    pub fn finish(self) -> Result<(), GobError> {
        self.r.finish()
    }
}

/// A value of a known type at the read position. Read it with exactly one method: a slot
/// dropped unread leaves the position before the value.
#[must_use = "a slot must be read or skipped to keep the stream in step"]
#[derive(Debug)]
pub struct Slot<'r, 'a> {
    types: &'r Types,
    type_id: TypeId,
    r: &'r mut Reader<'a>,
    depth: u32,
}

impl<'r, 'a> Slot<'r, 'a> {
    /// The value's wire type.
    pub fn type_id(&self) -> TypeId {
        self.type_id
    }

    /// Reads an unsigned integer.
    pub fn uint(self) -> Result<u64, GobError> {
        self.expect(TypeId::UINT, "uint")?;
        self.r.uint()
    }

    /// Reads a signed integer.
    pub fn int(self) -> Result<i64, GobError> {
        self.expect(TypeId::INT, "int")?;
        self.r.int()
    }

    /// Reads a bool (any non-zero value is true, as in Go).
    pub fn bool(self) -> Result<bool, GobError> {
        self.expect(TypeId::BOOL, "bool")?;
        Ok(self.r.uint()? != 0)
    }

    /// Reads a UTF-8 string.
    pub fn string(self) -> Result<&'a str, GobError> {
        self.expect(TypeId::STRING, "string")?;
        let b = self.r.byte_seq()?;
        std::str::from_utf8(b).map_err(|_| GobError::InvalidUtf8)
    }

    /// Reads a `[]byte`.
    pub fn bytes(self) -> Result<&'a [u8], GobError> {
        self.expect(TypeId::BYTES, "[]byte")?;
        self.r.byte_seq()
    }

    /// Opens a struct for reading field by field.
    pub fn into_struct(self) -> Result<StructReader<'r, 'a>, GobError> {
        let Some(WireType::Struct { fields, .. }) = self.types.get(self.type_id) else {
            return Err(self.mismatch("struct"));
        };
        let depth = enter(self.depth)?;
        Ok(StructReader {
            types: self.types,
            fields,
            r: self.r,
            field: -1,
            depth,
        })
    }

    /// Opens a slice (not an array) for reading element by element.
    pub fn into_slice(self) -> Result<SeqReader<'r, 'a>, GobError> {
        let Some(&WireType::Slice { elem, .. }) = self.types.get(self.type_id) else {
            return Err(self.mismatch("slice"));
        };
        let depth = enter(self.depth)?;
        let left = self.r.count()?;
        Ok(SeqReader {
            types: self.types,
            elem,
            r: self.r,
            left,
            depth,
        })
    }

    /// Opens a map for reading entry by entry.
    pub fn into_map(self) -> Result<MapReader<'r, 'a>, GobError> {
        let Some(&WireType::Map { key, elem, .. }) = self.types.get(self.type_id) else {
            return Err(self.mismatch("map"));
        };
        let depth = enter(self.depth)?;
        let count = self.r.uint()?;
        // Each entry is at least a one-byte key and a one-byte element.
        if count > (self.r.buf.len() / 2) as u64 {
            return Err(GobError::CountTooLarge {
                count,
                left: self.r.buf.len(),
            });
        }
        Ok(MapReader {
            types: self.types,
            key,
            elem,
            r: self.r,
            left: count as usize,
            depth,
        })
    }

    /// Skips the value, whatever its type.
    pub fn skip(self) -> Result<(), GobError> {
        skip(self.types, self.r, self.type_id, self.depth)
    }

    /// Decodes the value into a generic [`Value`].
    pub fn to_value(self) -> Result<Value, GobError> {
        let mut budget = MAX_VALUES;
        decode_value(self.types, self.r, self.type_id, self.depth, &mut budget)
    }

    fn expect(&self, want: TypeId, name: &'static str) -> Result<(), GobError> {
        if self.type_id == want {
            Ok(())
        } else {
            Err(self.mismatch(name))
        }
    }

    fn mismatch(&self, expected: &'static str) -> GobError {
        GobError::TypeMismatch {
            expected,
            found: self.type_id.0,
        }
    }
}

/// Reads a struct value field by field, in wire order.
#[derive(Debug)]
pub struct StructReader<'r, 'a> {
    types: &'r Types,
    fields: &'r [FieldType],
    r: &'r mut Reader<'a>,
    field: i64,
    depth: u32,
}

impl<'r, 'a> StructReader<'r, 'a> {
    /// The fields the struct's wire type defines, sent or not.
    pub fn wire_fields(&self) -> &'r [FieldType] {
        self.fields
    }

    /// The next field that was sent, with its name; `None` at the struct's end marker.
    pub fn next_field(&mut self) -> Result<Option<(&'r str, Slot<'_, 'a>)>, GobError> {
        let delta = self.r.uint()?;
        if delta == 0 {
            return Ok(None);
        }
        let count = self.fields.len();
        let field = u64::try_from(self.field)
            .map_or(delta.checked_sub(1), |f| f.checked_add(delta))
            .filter(|&f| f < count as u64)
            .ok_or(GobError::FieldOutOfRange {
                field: delta,
                count,
            })?;
        self.field = field as i64;
        let ft = &self.fields[field as usize];
        self.types.check(ft.id)?;
        Ok(Some((
            &ft.name,
            Slot {
                types: self.types,
                type_id: ft.id,
                r: &mut *self.r,
                depth: self.depth,
            },
        )))
    }

    /// Skips the remaining fields through the end marker.
    pub fn skip_rest(mut self) -> Result<(), GobError> {
        while let Some((_, slot)) = self.next_field()? {
            slot.skip()?;
        }
        Ok(())
    }
}

/// Reads a slice or array element by element.
#[derive(Debug)]
pub struct SeqReader<'r, 'a> {
    types: &'r Types,
    elem: TypeId,
    r: &'r mut Reader<'a>,
    left: usize,
    depth: u32,
}

impl<'a> SeqReader<'_, 'a> {
    /// Elements not yet read.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// The next element; `None` after the last.
    pub fn next_elem(&mut self) -> Result<Option<Slot<'_, 'a>>, GobError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.types.check(self.elem)?;
        self.left -= 1;
        Ok(Some(Slot {
            types: self.types,
            type_id: self.elem,
            r: &mut *self.r,
            depth: self.depth,
        }))
    }
}

/// Reads a map entry by entry: [`MapReader::next_key`] then [`MapReader::elem`], repeatedly.
#[derive(Debug)]
pub struct MapReader<'r, 'a> {
    types: &'r Types,
    key: TypeId,
    elem: TypeId,
    r: &'r mut Reader<'a>,
    left: usize,
    depth: u32,
}

impl<'a> MapReader<'_, 'a> {
    /// Entries not yet read.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// The key type.
    pub fn key_type(&self) -> TypeId {
        self.key
    }

    /// The element type.
    pub fn elem_type(&self) -> TypeId {
        self.elem
    }

    /// The next entry's key; `None` after the last. Read it, then read [`MapReader::elem`].
    pub fn next_key(&mut self) -> Result<Option<Slot<'_, 'a>>, GobError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.types.check(self.key)?;
        self.left -= 1;
        Ok(Some(Slot {
            types: self.types,
            type_id: self.key,
            r: &mut *self.r,
            depth: self.depth,
        }))
    }

    /// The element of the entry whose key was just read.
    pub fn elem(&mut self) -> Result<Slot<'_, 'a>, GobError> {
        self.types.check(self.elem)?;
        Ok(Slot {
            types: self.types,
            type_id: self.elem,
            r: &mut *self.r,
            depth: self.depth,
        })
    }
}

/// Go's `wireType` fields, in order.
const WT_ARRAY: usize = 0;
const WT_SLICE: usize = 1;
const WT_STRUCT: usize = 2;
const WT_MAP: usize = 3;
const WT_GOB_ENCODER: usize = 4;
const WT_BINARY_MARSHALER: usize = 5;
const WT_TEXT_MARSHALER: usize = 6;
const WT_FIELDS: usize = 7;

/// Reads a `wireType` struct; exactly one of its fields must be set.
fn read_wire_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut def = None;
    let mut fields = FieldWalk::new(WT_FIELDS);
    while let Some(field) = fields.next(r)? {
        if def.is_some() {
            return Err(GobError::BadWireType("more than one kind"));
        }
        def = Some(match field {
            WT_ARRAY => read_array_type(r)?,
            WT_SLICE => read_slice_type(r)?,
            WT_STRUCT => read_struct_type(r)?,
            WT_MAP => read_map_type(r)?,
            WT_GOB_ENCODER | WT_BINARY_MARSHALER | WT_TEXT_MARSHALER => {
                let (name, _) = read_common_only(r)?;
                WireType::Encoded { name }
            }
            _ => unreachable_field()?,
        });
    }
    def.ok_or(GobError::BadWireType("no kind"))
}

/// `FieldWalk` never yields an index at or past its count; this keeps the matches total
/// without a panic path.
fn unreachable_field<T>() -> Result<T, GobError> {
    Err(GobError::BadWireType("field out of range"))
}

/// Walks the field deltas of a struct of `count` fields, yielding 0-based field indices.
struct FieldWalk {
    count: usize,
    field: i64,
}

impl FieldWalk {
    fn new(count: usize) -> Self {
        FieldWalk { count, field: -1 }
    }

    fn next(&mut self, r: &mut Reader<'_>) -> Result<Option<usize>, GobError> {
        let delta = r.uint()?;
        if delta == 0 {
            return Ok(None);
        }
        let next = (self.field as i128) + delta as i128;
        if next >= self.count as i128 {
            return Err(GobError::FieldOutOfRange {
                field: next.min(u64::MAX as i128) as u64,
                count: self.count,
            });
        }
        self.field = next as i64;
        Ok(Some(next as usize))
    }
}

/// Reads `CommonType{Name string, Id typeId}`.
fn read_common(r: &mut Reader<'_>) -> Result<(String, i64), GobError> {
    let mut name = String::new();
    let mut id = 0;
    let mut fields = FieldWalk::new(2);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = r.string()?.to_owned(),
            1 => id = r.int()?,
            _ => unreachable_field()?,
        }
    }
    Ok((name, id))
}

/// Reads a struct whose only field is a `CommonType` (`gobEncoderType` and friends).
fn read_common_only(r: &mut Reader<'_>) -> Result<(String, i64), GobError> {
    let mut common = (String::new(), 0);
    let mut fields = FieldWalk::new(1);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => common = read_common(r)?,
            _ => unreachable_field()?,
        }
    }
    Ok(common)
}

/// Reads `arrayType{CommonType, Elem typeId, Len int}`.
fn read_array_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let (mut name, mut elem, mut len) = (String::new(), 0, 0);
    let mut fields = FieldWalk::new(3);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = read_common(r)?.0,
            1 => elem = r.int()?,
            2 => len = r.int()?,
            _ => unreachable_field()?,
        }
    }
    let len = u64::try_from(len).map_err(|_| GobError::BadWireType("negative array length"))?;
    Ok(WireType::Array {
        name,
        elem: type_ref(elem)?,
        len,
    })
}

/// Reads `sliceType{CommonType, Elem typeId}`.
fn read_slice_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let (mut name, mut elem) = (String::new(), 0);
    let mut fields = FieldWalk::new(2);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = read_common(r)?.0,
            1 => elem = r.int()?,
            _ => unreachable_field()?,
        }
    }
    Ok(WireType::Slice {
        name,
        elem: type_ref(elem)?,
    })
}

/// Reads `structType{CommonType, Field []*fieldType}`.
fn read_struct_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut name = String::new();
    let mut list = Vec::new();
    let mut fields = FieldWalk::new(2);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = read_common(r)?.0,
            1 => {
                let count = r.count()?;
                list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push(read_field_type(r)?);
                }
            }
            _ => unreachable_field()?,
        }
    }
    Ok(WireType::Struct { name, fields: list })
}

/// Reads `fieldType{Name string, Id typeId}`.
fn read_field_type(r: &mut Reader<'_>) -> Result<FieldType, GobError> {
    let (mut name, mut id) = ("", 0);
    let mut fields = FieldWalk::new(2);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = r.string()?,
            1 => id = r.int()?,
            _ => unreachable_field()?,
        }
    }
    Ok(FieldType {
        name: name.into(),
        id: type_ref(id)?,
    })
}

/// Reads `mapType{CommonType, Key typeId, Elem typeId}`.
fn read_map_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let (mut name, mut key, mut elem) = (String::new(), 0, 0);
    let mut fields = FieldWalk::new(3);
    while let Some(field) = fields.next(r)? {
        match field {
            0 => name = read_common(r)?.0,
            1 => key = r.int()?,
            2 => elem = r.int()?,
            _ => unreachable_field()?,
        }
    }
    Ok(WireType::Map {
        name,
        key: type_ref(key)?,
        elem: type_ref(elem)?,
    })
}

/// A type id referenced inside a definition: positive and 32-bit. Whether it is defined is
/// checked when a value uses it, because Go sends inner definitions after outer ones.
fn type_ref(id: i64) -> Result<TypeId, GobError> {
    i32::try_from(id)
        .ok()
        .filter(|&id| id > 0)
        .map(TypeId)
        .ok_or(GobError::BadTypeId(id))
}

fn enter(depth: u32) -> Result<u32, GobError> {
    if depth >= MAX_DEPTH {
        Err(GobError::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

/// Skips one value of type `id`.
fn skip(types: &Types, r: &mut Reader<'_>, id: TypeId, depth: u32) -> Result<(), GobError> {
    match id {
        TypeId::BOOL | TypeId::INT | TypeId::UINT | TypeId::FLOAT => r.uint().map(drop),
        TypeId::COMPLEX => r.uint().and_then(|_| r.uint()).map(drop),
        TypeId::BYTES | TypeId::STRING => r.byte_seq().map(drop),
        _ => {
            types.check(id)?;
            let Some(def) = types.get(id) else {
                return Err(GobError::Unsupported(id.0));
            };
            let depth = enter(depth)?;
            match def {
                WireType::Array { elem, len, .. } => {
                    let n = r.count()?;
                    check_array_len(*len, n)?;
                    for _ in 0..n {
                        skip(types, r, *elem, depth)?;
                    }
                }
                WireType::Slice { elem, .. } => {
                    for _ in 0..r.count()? {
                        skip(types, r, *elem, depth)?;
                    }
                }
                WireType::Struct { fields, .. } => {
                    let mut walk = FieldWalk::new(fields.len());
                    while let Some(f) = walk.next(r)? {
                        skip(types, r, fields[f].id, depth)?;
                    }
                }
                WireType::Map { key, elem, .. } => {
                    for _ in 0..r.count()? {
                        skip(types, r, *key, depth)?;
                        skip(types, r, *elem, depth)?;
                    }
                }
                WireType::Encoded { .. } => {
                    r.byte_seq()?;
                }
            }
            Ok(())
        }
    }
}

fn check_array_len(expected: u64, found: usize) -> Result<(), GobError> {
    if expected == found as u64 {
        Ok(())
    } else {
        Err(GobError::ArrayLength {
            expected,
            found: found as u64,
        })
    }
}

/// Decodes one value of type `id` into a [`Value`], spending `budget` nodes.
fn decode_value(
    types: &Types,
    r: &mut Reader<'_>,
    id: TypeId,
    depth: u32,
    budget: &mut usize,
) -> Result<Value, GobError> {
    *budget = budget.checked_sub(1).ok_or(GobError::TooManyValues)?;
    Ok(match id {
        TypeId::BOOL => Value::Bool(r.uint()? != 0),
        TypeId::INT => Value::Int(r.int()?),
        TypeId::UINT => Value::Uint(r.uint()?),
        TypeId::FLOAT => Value::Float(float_from_wire(r.uint()?)),
        TypeId::COMPLEX => {
            let re = float_from_wire(r.uint()?);
            Value::Complex(re, float_from_wire(r.uint()?))
        }
        TypeId::BYTES => Value::Bytes(r.byte_seq()?.to_vec()),
        TypeId::STRING => Value::String(r.string()?.to_owned()),
        _ => {
            types.check(id)?;
            let Some(def) = types.get(id) else {
                return Err(GobError::Unsupported(id.0));
            };
            let depth = enter(depth)?;
            match def {
                WireType::Array { elem, len, .. } => {
                    let n = r.count()?;
                    check_array_len(*len, n)?;
                    Value::Array(decode_seq(types, r, *elem, n, depth, budget)?)
                }
                WireType::Slice { elem, .. } => {
                    let n = r.count()?;
                    Value::Slice(decode_seq(types, r, *elem, n, depth, budget)?)
                }
                WireType::Struct { fields, .. } => {
                    let mut out = Vec::new();
                    let mut walk = FieldWalk::new(fields.len());
                    while let Some(f) = walk.next(r)? {
                        let v = decode_value(types, r, fields[f].id, depth, budget)?;
                        out.push((fields[f].name.clone(), v));
                    }
                    Value::Struct(out)
                }
                WireType::Map { key, elem, .. } => {
                    let n = r.count()?;
                    let mut out = Vec::with_capacity(n.min(*budget));
                    for _ in 0..n {
                        let k = decode_value(types, r, *key, depth, budget)?;
                        let v = decode_value(types, r, *elem, depth, budget)?;
                        out.push((k, v));
                    }
                    Value::Map(out)
                }
                WireType::Encoded { .. } => Value::Encoded(r.byte_seq()?.to_vec()),
            }
        }
    })
}

fn decode_seq(
    types: &Types,
    r: &mut Reader<'_>,
    elem: TypeId,
    n: usize,
    depth: u32,
    budget: &mut usize,
) -> Result<Vec<Value>, GobError> {
    let mut out = Vec::with_capacity(n.min(*budget));
    for _ in 0..n {
        out.push(decode_value(types, r, elem, depth, budget)?);
    }
    Ok(out)
}

/// Go sends a float64 as its bits byte-reversed, so small exponents compress.
fn float_from_wire(u: u64) -> f64 {
    f64::from_bits(u.swap_bytes())
}

/// A cursor over gob bytes. Every read checks the bytes left first.
#[derive(Debug, Clone)]
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn uint(&mut self) -> Result<u64, GobError> {
        let (&b, rest) = self.buf.split_first().ok_or(GobError::Truncated)?;
        if b < 0x80 {
            self.buf = rest;
            return Ok(u64::from(b));
        }
        let n = usize::from((b as i8).unsigned_abs());
        if n > 8 {
            return Err(GobError::BadUint(b));
        }
        let (bytes, rest) = rest.split_at_checked(n).ok_or(GobError::Truncated)?;
        self.buf = rest;
        Ok(bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn int(&mut self) -> Result<i64, GobError> {
        let u = self.uint()?;
        // Bit 0 says "complement"; the rest is the magnitude.
        Ok(if u & 1 == 1 {
            !((u >> 1) as i64)
        } else {
            (u >> 1) as i64
        })
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GobError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or(GobError::Truncated)?;
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn byte_seq(&mut self) -> Result<&'a [u8], GobError> {
        let n = self.uint()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, GobError> {
        std::str::from_utf8(self.byte_seq()?).map_err(|_| GobError::InvalidUtf8)
    }

    /// An element count; every gob element takes at least one byte, so a count above the
    /// bytes left is a lie and is refused before anything is allocated for it.
    fn count(&mut self) -> Result<usize, GobError> {
        let count = self.uint()?;
        let left = self.buf.len();
        if count > left as u64 {
            return Err(GobError::CountTooLarge { count, left });
        }
        Ok(count as usize)
    }

    fn finish(&self) -> Result<(), GobError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(GobError::ExtraData(self.buf.len()))
        }
    }
}

/// A Go type the [`Encoder`] can describe on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeDesc {
    /// `bool`.
    Bool,
    /// A signed integer.
    Int,
    /// An unsigned integer.
    Uint,
    /// `[]byte`.
    Bytes,
    /// `string`.
    String,
    /// A named struct with its exported fields in order.
    Struct {
        /// Go type name, as Go's decoder will see it.
        name: &'static str,
        /// The fields.
        fields: &'static [FieldDesc],
    },
    /// A slice.
    Slice {
        /// Element type.
        elem: &'static TypeDesc,
    },
    /// A map.
    Map {
        /// Key type.
        key: &'static TypeDesc,
        /// Element type.
        elem: &'static TypeDesc,
    },
    /// A slice with a Go type name: a named type (`type entries []*entry`), or an unnamed
    /// one Go first met as a struct field, which Go names by its type string
    /// (`[]mesh.PeerName`). Go's decoder ignores the name, but it is part of the bytes.
    NamedSlice {
        /// Go type name.
        name: &'static str,
        /// Element type.
        elem: &'static TypeDesc,
    },
    /// A map with a Go type name (see [`TypeDesc::NamedSlice`]).
    NamedMap {
        /// Go type name.
        name: &'static str,
        /// Key type.
        key: &'static TypeDesc,
        /// Element type.
        elem: &'static TypeDesc,
    },
}

/// A struct field for [`TypeDesc::Struct`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDesc {
    /// Go field name.
    pub name: &'static str,
    /// Field type.
    pub ty: &'static TypeDesc,
}

impl TypeDesc {
    fn builtin_id(&self) -> Option<TypeId> {
        match self {
            TypeDesc::Bool => Some(TypeId::BOOL),
            TypeDesc::Int => Some(TypeId::INT),
            TypeDesc::Uint => Some(TypeId::UINT),
            TypeDesc::Bytes => Some(TypeId::BYTES),
            TypeDesc::String => Some(TypeId::STRING),
            TypeDesc::Struct { .. }
            | TypeDesc::Slice { .. }
            | TypeDesc::Map { .. }
            | TypeDesc::NamedSlice { .. }
            | TypeDesc::NamedMap { .. } => None,
        }
    }

    /// The Go type name written in the definition (empty for unnamed types).
    fn name(&self) -> &'static str {
        match self {
            TypeDesc::Struct { name, .. }
            | TypeDesc::NamedSlice { name, .. }
            | TypeDesc::NamedMap { name, .. } => name,
            TypeDesc::Bool
            | TypeDesc::Int
            | TypeDesc::Uint
            | TypeDesc::Bytes
            | TypeDesc::String
            | TypeDesc::Slice { .. }
            | TypeDesc::Map { .. } => "",
        }
    }
}

/// Writes a gob stream: type definitions once each, then values. One encoder per stream.
#[derive(Debug, Clone)]
pub struct Encoder {
    out: Vec<u8>,
    scratch: Vec<u8>,
    next_id: i32,
    /// Types given ids, and whether their definition has been written.
    ids: Vec<(&'static TypeDesc, TypeId, bool)>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// A fresh encoder whose user type ids start at 65.
    pub fn new() -> Self {
        Self::with_first_type_id(TypeId(65))
    }

    /// A fresh encoder whose user type ids start at `first` (at least 64). Only useful to
    /// reproduce a Go process's exact bytes; any id Go accepts decodes the same.
    pub fn with_first_type_id(first: TypeId) -> Self {
        Encoder {
            out: Vec::new(),
            scratch: Vec::new(),
            next_id: first.0.max(TypeId::FIRST_USER.0),
            ids: Vec::new(),
        }
    }

    /// Numbers `ty` and the types inside it that have no id yet from `first` up, in Go's
    /// order, without writing anything; the types encoded later keep the ids they would have
    /// had. Go numbers types once per process, so a type the process used before others (at
    /// start-up, say) has ids apart from theirs; this reproduces such a stream byte for byte.
    /// Call it before encoding, with ids the encoder's own numbering does not reach.
    pub fn assign_type_ids(&mut self, ty: &'static TypeDesc, first: TypeId) {
        let resume = self.next_id;
        self.next_id = first.0.max(TypeId::FIRST_USER.0);
        self.assign(ty);
        let end = self.next_id;
        // Never hand out an id twice, even if the ranges were chosen badly.
        self.next_id = if (first.0..end).contains(&resume) {
            end
        } else {
            resume
        };
    }

    /// A fresh encoder that appends its stream to `buf` (e.g. after a message tag).
    pub fn with_buffer(buf: Vec<u8>) -> Self {
        Encoder {
            out: buf,
            scratch: Vec::new(),
            next_id: 65,
            ids: Vec::new(),
        }
    }

    /// Writes one top-level value of type `ty`, whose body `write` produces; the definitions
    /// it needs go first. `write` must write a value of exactly that type.
    pub fn encode(&mut self, ty: &'static TypeDesc, write: impl FnOnce(&mut ValueWriter<'_>)) {
        let id = self.assign(ty);
        self.send_definitions(ty);
        self.scratch.clear();
        put_int(&mut self.scratch, i64::from(id.0));
        if !matches!(ty, TypeDesc::Struct { .. }) {
            self.scratch.push(0); // singleton delta
        }
        write(&mut ValueWriter {
            buf: &mut self.scratch,
        });
        self.flush_message();
    }

    /// Writes a top-level `string`.
    pub fn string(&mut self, s: &str) {
        self.encode(&TypeDesc::String, |w| w.string(s));
    }

    /// Writes a top-level unsigned integer.
    pub fn uint(&mut self, v: u64) {
        self.encode(&TypeDesc::Uint, |w| w.uint(v));
    }

    /// Writes a top-level `[]byte`.
    pub fn bytes(&mut self, b: &[u8]) {
        // Written straight to the output: gossip payloads can be large, and going through
        // the scratch buffer would copy them twice.
        self.scratch.clear();
        put_int(&mut self.scratch, i64::from(TypeId::BYTES.0));
        self.scratch.push(0); // singleton delta
        put_uint(&mut self.scratch, b.len() as u64);
        put_uint(&mut self.out, (self.scratch.len() + b.len()) as u64);
        self.out.extend_from_slice(&self.scratch);
        self.out.extend_from_slice(b);
    }

    /// The stream so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.out
    }

    /// The finished stream.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Gives `ty` and the types inside it ids, in the order Go's type registry does: a struct
    /// before its fields (so structs may recurse), a slice or map after its parts.
    fn assign(&mut self, ty: &'static TypeDesc) -> TypeId {
        if let Some(id) = ty.builtin_id() {
            return id;
        }
        if let Some(&(_, id, _)) = self.ids.iter().find(|(d, _, _)| same_desc(d, ty)) {
            return id;
        }
        match ty {
            TypeDesc::Struct { fields, .. } => {
                let id = self.alloc(ty);
                for f in fields.iter() {
                    self.assign(f.ty);
                }
                id
            }
            TypeDesc::Slice { elem } | TypeDesc::NamedSlice { elem, .. } => {
                self.assign(elem);
                self.alloc(ty)
            }
            TypeDesc::Map { key, elem } | TypeDesc::NamedMap { key, elem, .. } => {
                self.assign(key);
                self.assign(elem);
                self.alloc(ty)
            }
            TypeDesc::Bool
            | TypeDesc::Int
            | TypeDesc::Uint
            | TypeDesc::Bytes
            | TypeDesc::String => {
                // Handled by builtin_id above.
                TypeId(0)
            }
        }
    }

    fn alloc(&mut self, ty: &'static TypeDesc) -> TypeId {
        let id = TypeId(self.next_id);
        self.next_id += 1;
        self.ids.push((ty, id, false));
        id
    }

    fn id_of(&self, ty: &'static TypeDesc) -> TypeId {
        ty.builtin_id()
            .or_else(|| {
                self.ids
                    .iter()
                    .find(|(d, _, _)| same_desc(d, ty))
                    .map(|&(_, id, _)| id)
            })
            .unwrap_or(TypeId(0))
    }

    /// Writes the definition of `ty`, then of the types inside it, each once (Go's order).
    fn send_definitions(&mut self, ty: &'static TypeDesc) {
        if ty.builtin_id().is_some() {
            return;
        }
        let Some(entry) = self.ids.iter_mut().find(|(d, _, _)| same_desc(d, ty)) else {
            return;
        };
        if std::mem::replace(&mut entry.2, true) {
            return;
        }
        let id = entry.1;
        self.scratch.clear();
        put_int(&mut self.scratch, -i64::from(id.0));
        self.write_wire_type(ty, id);
        self.flush_message();
        match ty {
            TypeDesc::Struct { fields, .. } => {
                for f in fields.iter() {
                    self.send_definitions(f.ty);
                }
            }
            TypeDesc::Slice { elem } | TypeDesc::NamedSlice { elem, .. } => {
                self.send_definitions(elem)
            }
            TypeDesc::Map { key, elem } | TypeDesc::NamedMap { key, elem, .. } => {
                self.send_definitions(key);
                self.send_definitions(elem);
            }
            TypeDesc::Bool
            | TypeDesc::Int
            | TypeDesc::Uint
            | TypeDesc::Bytes
            | TypeDesc::String => {}
        }
    }

    /// Writes a `wireType` struct describing `ty` into the scratch buffer.
    fn write_wire_type(&mut self, ty: &'static TypeDesc, id: TypeId) {
        let mut buf = std::mem::take(&mut self.scratch);
        let mut wire = StructWriter::new(&mut buf);
        match ty {
            TypeDesc::Struct { name, fields } => {
                let mut st = wire.struct_field(WT_STRUCT);
                write_common(&mut st, name, id);
                if !fields.is_empty() {
                    let mut list = st.field(1);
                    list.seq_len(fields.len());
                    for f in fields.iter() {
                        let mut ft = list.begin_struct();
                        ft.string(0, f.name);
                        ft.int(1, i64::from(self.id_of(f.ty).0));
                        ft.end();
                    }
                }
                st.end();
            }
            TypeDesc::Slice { elem } | TypeDesc::NamedSlice { elem, .. } => {
                let mut st = wire.struct_field(WT_SLICE);
                write_common(&mut st, ty.name(), id);
                st.int(1, i64::from(self.id_of(elem).0));
                st.end();
            }
            TypeDesc::Map { key, elem } | TypeDesc::NamedMap { key, elem, .. } => {
                let mut st = wire.struct_field(WT_MAP);
                write_common(&mut st, ty.name(), id);
                st.int(1, i64::from(self.id_of(key).0));
                st.int(2, i64::from(self.id_of(elem).0));
                st.end();
            }
            TypeDesc::Bool
            | TypeDesc::Int
            | TypeDesc::Uint
            | TypeDesc::Bytes
            | TypeDesc::String => {}
        }
        wire.end();
        self.scratch = buf;
    }

    /// Appends the scratch buffer to the stream as one length-prefixed message.
    fn flush_message(&mut self) {
        put_uint(&mut self.out, self.scratch.len() as u64);
        self.out.extend_from_slice(&self.scratch);
    }
}

/// Whether two descriptions are the same type; the address check is the common fast case.
fn same_desc(a: &TypeDesc, b: &TypeDesc) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Writes field 0 of a `*Type` struct: `CommonType{Name, Id}`.
fn write_common(st: &mut StructWriter<'_>, name: &str, id: TypeId) {
    let mut common = st.struct_field(0);
    common.string(0, name);
    common.int(1, i64::from(id.0));
    common.end();
}

/// Writes one value (a top-level value's body, a slice element, a map key or element).
#[derive(Debug)]
pub struct ValueWriter<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> ValueWriter<'b> {
    /// An unsigned integer.
    pub fn uint(&mut self, v: u64) {
        put_uint(self.buf, v);
    }

    /// A signed integer.
    pub fn int(&mut self, v: i64) {
        put_int(self.buf, v);
    }

    /// A bool.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    /// A string.
    pub fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// A `[]byte`.
    pub fn bytes(&mut self, b: &[u8]) {
        put_uint(self.buf, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// The count of a slice or map; the elements (keys and elements, for a map) follow
    /// through this same writer.
    pub fn seq_len(&mut self, n: usize) {
        put_uint(self.buf, n as u64);
    }

    /// A struct; finish it with [`StructWriter::end`].
    pub fn begin_struct(&mut self) -> StructWriter<'_> {
        StructWriter::new(self.buf)
    }
}

/// Writes a struct's fields in increasing field order, omitting zero values as Go does.
#[derive(Debug)]
pub struct StructWriter<'b> {
    buf: &'b mut Vec<u8>,
    last: i64,
}

impl<'b> StructWriter<'b> {
    fn new(buf: &'b mut Vec<u8>) -> Self {
        StructWriter { buf, last: -1 }
    }

    /// Field `index` (0-based) as an unsigned integer; omitted when zero.
    pub fn uint(&mut self, index: usize, v: u64) {
        if v != 0 {
            self.delta(index);
            put_uint(self.buf, v);
        }
    }

    /// Field `index` as a signed integer; omitted when zero.
    pub fn int(&mut self, index: usize, v: i64) {
        if v != 0 {
            self.delta(index);
            put_int(self.buf, v);
        }
    }

    /// Field `index` as a bool; omitted when false.
    pub fn bool(&mut self, index: usize, v: bool) {
        if v {
            self.delta(index);
            self.buf.push(1);
        }
    }

    /// Field `index` as a string; omitted when empty.
    pub fn string(&mut self, index: usize, s: &str) {
        self.bytes(index, s.as_bytes());
    }

    /// Field `index` as a `[]byte`; omitted when empty.
    pub fn bytes(&mut self, index: usize, b: &[u8]) {
        if !b.is_empty() {
            self.delta(index);
            put_uint(self.buf, b.len() as u64);
            self.buf.extend_from_slice(b);
        }
    }

    /// Field `index` as a nested struct (always sent, as Go does).
    pub fn struct_field(&mut self, index: usize) -> StructWriter<'_> {
        self.delta(index);
        StructWriter::new(self.buf)
    }

    /// Field `index` as any value written through a [`ValueWriter`]. The caller omits
    /// zero values (empty slices and maps) to match Go.
    pub fn field(&mut self, index: usize) -> ValueWriter<'_> {
        self.delta(index);
        ValueWriter { buf: self.buf }
    }

    /// Writes the end marker.
    pub fn end(self) {
        self.buf.push(0);
    }

    fn delta(&mut self, index: usize) {
        let index = index as i64;
        debug_assert!(
            index > self.last,
            "gob struct fields must be written in order"
        );
        put_uint(self.buf, (index - self.last) as u64);
        self.last = index;
    }
}

/// Appends a gob unsigned integer.
pub fn put_uint(buf: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    let bytes = v.to_be_bytes();
    let skip = (v.leading_zeros() / 8) as usize;
    let n = 8 - skip;
    buf.push((n as u8).wrapping_neg());
    buf.extend_from_slice(&bytes[skip..]);
}

/// Appends a gob signed integer.
pub fn put_int(buf: &mut Vec<u8>, v: i64) {
    let u = if v < 0 {
        ((!v as u64) << 1) | 1
    } else {
        (v as u64) << 1
    };
    put_uint(buf, u);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uint_bytes(v: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_uint(&mut b, v);
        b
    }

    fn int_bytes(v: i64) -> Vec<u8> {
        let mut b = Vec::new();
        put_int(&mut b, v);
        b
    }

    #[test]
    fn integers_match_go_doc_examples() {
        assert_eq!(uint_bytes(0), [0x00]);
        assert_eq!(uint_bytes(7), [0x07]);
        assert_eq!(uint_bytes(127), [0x7f]);
        assert_eq!(uint_bytes(128), [0xff, 0x80]);
        assert_eq!(uint_bytes(256), [0xfe, 0x01, 0x00]);
        assert_eq!(
            uint_bytes(u64::MAX),
            [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(int_bytes(-129), [0xfe, 0x01, 0x01]);
        assert_eq!(int_bytes(-1), [0x01]);
        assert_eq!(int_bytes(75), [0xff, 0x96]);
        assert_eq!(int_bytes(-75), [0xff, 0x95]);
        assert_eq!(
            int_bytes(i64::MIN),
            [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn integers_round_trip_at_edges() {
        for v in [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            1 << 48,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let b = uint_bytes(v);
            assert_eq!(Reader { buf: &b }.uint(), Ok(v));
        }
        for v in [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN] {
            let b = int_bytes(v);
            assert_eq!(Reader { buf: &b }.int(), Ok(v));
        }
    }

    #[test]
    fn float_decodes_go_doc_example() {
        // Go's doc: 17.0 is sent as FE 31 40.
        let mut r = Reader {
            buf: &[0xfe, 0x31, 0x40],
        };
        assert_eq!(float_from_wire(r.uint().unwrap()), 17.0);
    }

    #[test]
    fn bad_uint_length_is_refused() {
        assert_eq!(Reader { buf: &[0x80] }.uint(), Err(GobError::BadUint(0x80)));
        assert_eq!(
            Reader { buf: &[0xf7; 10] }.uint(),
            Err(GobError::BadUint(0xf7))
        );
        assert_eq!(
            Reader { buf: &[0xfe, 0x01] }.uint(),
            Err(GobError::Truncated)
        );
        assert_eq!(Reader { buf: &[] }.uint(), Err(GobError::Truncated));
    }

    /// Frame 13 of three-peers-plain: host2's feature map (type id 74 in that process).
    const FEATURES_HEX: &str = "0eff93040102ff9400010c010c0000ff9eff9400080f506565724e616d65466c61766f7572036d6163044e616d651161613a30303a30303a30303a30303a3032084e69636b4e616d6505686f7374320753686f7274494404333432320355494414313033343735343832353237313932373336323706436f6e6e494414313436313139303134393738313631333530353607547275737465640566616c7365084f7665726c61797306736c65657665";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_captured_map_definition_and_value() {
        let bytes = unhex(FEATURES_HEX);
        let mut dec = Decoder::new(&bytes);
        let value = dec.next_value().unwrap().unwrap();
        assert_eq!(
            dec.types().get(TypeId(74)),
            Some(&WireType::Map {
                name: String::new(),
                key: TypeId::STRING,
                elem: TypeId::STRING
            })
        );
        let Value::Map(entries) = value else {
            panic!("not a map: {value:?}");
        };
        assert_eq!(entries.len(), 8);
        assert!(entries.contains(&(
            Value::String("PeerNameFlavour".into()),
            Value::String("mac".into())
        )));
        assert_eq!(dec.next_value(), Ok(None));
    }

    #[test]
    fn encoder_reproduces_captured_map_definition() {
        static SS: TypeDesc = TypeDesc::Map {
            key: &TypeDesc::String,
            elem: &TypeDesc::String,
        };
        let mut enc = Encoder::with_first_type_id(TypeId(74));
        enc.encode(&SS, |w| w.seq_len(0));
        let bytes = unhex(FEATURES_HEX);
        assert_eq!(&enc.as_bytes()[..15], &bytes[..15]);
        // The value message: type 74, singleton 0, count 0.
        assert_eq!(&enc.as_bytes()[15..], [0x04, 0xff, 0x94, 0x00, 0x00]);
    }

    #[test]
    fn encoder_sends_each_definition_once() {
        static SLICE: TypeDesc = TypeDesc::Slice {
            elem: &TypeDesc::Uint,
        };
        let mut enc = Encoder::new();
        enc.encode(&SLICE, |w| {
            w.seq_len(2);
            w.uint(1);
            w.uint(300);
        });
        enc.encode(&SLICE, |w| w.seq_len(0));
        let bytes = enc.into_bytes();
        let mut dec = Decoder::new(&bytes);
        assert_eq!(
            dec.next_value(),
            Ok(Some(Value::Slice(vec![Value::Uint(1), Value::Uint(300)])))
        );
        assert_eq!(dec.next_value(), Ok(Some(Value::Slice(vec![]))));
        assert_eq!(dec.next_value(), Ok(None));
        assert_eq!(dec.types().len(), 1);
    }

    #[test]
    fn refuses_values_of_undefined_types() {
        // Message: length 3, type id 70, singleton, value 1.
        let bytes = [0x04, 0xff, 0x8c, 0x00, 0x01];
        assert_eq!(
            Decoder::new(&bytes).next_value(),
            Err(GobError::UnknownType(70))
        );
    }

    #[test]
    fn refuses_interfaces_and_reserved_definitions() {
        assert_eq!(
            Decoder::new(&[0x02, 0x10, 0x00]).next_value(),
            Err(GobError::Unsupported(8))
        );
        // Definition of id 16 (Go's own wireType).
        assert_eq!(
            Decoder::new(&[0x02, 0x1f, 0x00]).next_value(),
            Err(GobError::ReservedTypeId(16))
        );
    }

    #[test]
    fn refuses_duplicate_definitions() {
        let mut enc = Encoder::new();
        static S: TypeDesc = TypeDesc::Slice {
            elem: &TypeDesc::Bool,
        };
        enc.encode(&S, |w| w.seq_len(0));
        let one = enc.into_bytes();
        let def_len = usize::from(one[0]) + 1;
        let mut twice = one[..def_len].to_vec();
        twice.extend_from_slice(&one);
        assert_eq!(
            Decoder::new(&twice).next_value(),
            Err(GobError::DuplicateType(65))
        );
    }

    #[test]
    fn far_type_ids_work_and_are_checked_for_duplicates() {
        static S: TypeDesc = TypeDesc::Slice {
            elem: &TypeDesc::String,
        };
        for first in [
            TypeId(64),
            TypeId(64 + 4095),
            TypeId(64 + 4096),
            TypeId(1 << 30),
        ] {
            let mut enc = Encoder::with_first_type_id(first);
            enc.encode(&S, |w| {
                w.seq_len(1);
                w.string("x");
            });
            let one = enc.into_bytes();
            let mut dec = Decoder::new(&one);
            assert_eq!(
                dec.next_value(),
                Ok(Some(Value::Slice(vec![Value::String("x".into())])))
            );
            assert!(dec.types().get(first).is_some());
            assert_eq!(dec.types().len(), 1);

            let def_len = usize::from(one[0]) + 1;
            let mut twice = one[..def_len].to_vec();
            twice.extend_from_slice(&one);
            assert_eq!(
                Decoder::new(&twice).next_value(),
                Err(GobError::DuplicateType(first.0))
            );
        }
        assert!(Types::default().get(TypeId(i32::MIN)).is_none());
    }

    #[test]
    fn refuses_counts_beyond_the_input() {
        static S: TypeDesc = TypeDesc::Slice {
            elem: &TypeDesc::Bool,
        };
        let mut enc = Encoder::new();
        enc.encode(&S, |w| w.seq_len(0));
        let mut bytes = enc.into_bytes();
        let def_len = usize::from(bytes[0]) + 1;
        bytes.truncate(def_len);
        // Type 65, singleton, a count of a billion, one element.
        bytes.extend_from_slice(&[0x09, 0xff, 0x82, 0x00, 0xfc, 0x3b, 0x9a, 0xca, 0x00, 0x01]);
        assert_eq!(
            Decoder::new(&bytes).next_value(),
            Err(GobError::CountTooLarge {
                count: 1_000_000_000,
                left: 1
            })
        );
    }

    #[test]
    fn refuses_deep_nesting() {
        // type 64 = struct { F *T }: a recursive type, then a value nested 100 deep.
        let mut def = vec![];
        put_int(&mut def, -64);
        def.extend_from_slice(&[0x03, 0x01, 0x01, 0x01, b'T', 0x01]);
        put_int(&mut def, 64);
        def.extend_from_slice(&[0x00, 0x01, 0x01, 0x01, 0x01, b'F', 0x01]);
        put_int(&mut def, 64);
        def.extend_from_slice(&[0x00, 0x00, 0x00]);
        let mut value = vec![];
        put_int(&mut value, 64);
        value.extend(std::iter::repeat_n(0x01, 100));
        value.extend(std::iter::repeat_n(0x00, 101));
        let mut bytes = vec![];
        put_uint(&mut bytes, def.len() as u64);
        bytes.extend_from_slice(&def);
        put_uint(&mut bytes, value.len() as u64);
        bytes.extend_from_slice(&value);

        let mut dec = Decoder::new(&bytes);
        assert_eq!(dec.next_value(), Err(GobError::TooDeep));
        let mut dec = Decoder::new(&bytes);
        let mut top = dec.next_top().unwrap().unwrap();
        assert_eq!(top.slot().unwrap().skip(), Err(GobError::TooDeep));
    }

    #[test]
    fn refuses_trailing_bytes_in_a_message() {
        // string "a" then an extra byte, in one message.
        let bytes = [0x05, 0x0c, 0x00, 0x01, b'a', 0x00];
        assert_eq!(
            Decoder::new(&bytes).next_value(),
            Err(GobError::ExtraData(1))
        );
    }

    #[test]
    fn typed_reads_check_the_wire_type() {
        let mut enc = Encoder::new();
        enc.string("topology");
        let bytes = enc.into_bytes();
        assert_eq!(
            Decoder::new(&bytes).uint(),
            Err(GobError::TypeMismatch {
                expected: "uint",
                found: 6
            })
        );
        assert_eq!(Decoder::new(&bytes).string(), Ok("topology"));
    }

    #[test]
    fn named_slices_and_maps_carry_their_name_and_differ_from_unnamed_ones() {
        static NAMED: TypeDesc = TypeDesc::NamedSlice {
            name: "Value",
            elem: &TypeDesc::Uint,
        };
        static UNNAMED: TypeDesc = TypeDesc::Slice {
            elem: &TypeDesc::Uint,
        };
        static NAMED_MAP: TypeDesc = TypeDesc::NamedMap {
            name: "map[mesh.PeerName]string",
            key: &TypeDesc::Uint,
            elem: &TypeDesc::String,
        };
        let mut enc = Encoder::new();
        enc.encode(&NAMED, |w| {
            w.seq_len(1);
            w.uint(7);
        });
        enc.encode(&UNNAMED, |w| w.seq_len(0));
        enc.encode(&NAMED_MAP, |w| {
            w.seq_len(1);
            w.uint(1);
            w.string("a");
        });
        let bytes = enc.into_bytes();
        let mut dec = Decoder::new(&bytes);
        assert_eq!(
            dec.next_value(),
            Ok(Some(Value::Slice(vec![Value::Uint(7)])))
        );
        assert_eq!(dec.next_value(), Ok(Some(Value::Slice(vec![]))));
        assert_eq!(
            dec.next_value(),
            Ok(Some(Value::Map(vec![(
                Value::Uint(1),
                Value::String("a".into())
            )])))
        );
        assert_eq!(
            dec.types().get(TypeId(65)),
            Some(&WireType::Slice {
                name: "Value".into(),
                elem: TypeId::UINT
            })
        );
        assert_eq!(
            dec.types().get(TypeId(66)),
            Some(&WireType::Slice {
                name: String::new(),
                elem: TypeId::UINT
            })
        );
        assert!(matches!(
            dec.types().get(TypeId(67)),
            Some(WireType::Map { name, .. }) if name == "map[mesh.PeerName]string"
        ));
    }

    #[test]
    fn pre_assigned_type_ids_are_kept_and_numbering_resumes() {
        static INNER_FIELDS: [FieldDesc; 1] = [FieldDesc {
            name: "A",
            ty: &TypeDesc::Uint,
        }];
        static INNER: TypeDesc = TypeDesc::Struct {
            name: "Inner",
            fields: &INNER_FIELDS,
        };
        static INNERS: TypeDesc = TypeDesc::Slice { elem: &INNER };
        static OUTER_FIELDS: [FieldDesc; 2] = [
            FieldDesc {
                name: "L",
                ty: &TypeDesc::Slice {
                    elem: &TypeDesc::String,
                },
            },
            FieldDesc {
                name: "I",
                ty: &INNERS,
            },
        ];
        static OUTER: TypeDesc = TypeDesc::Struct {
            name: "Outer",
            fields: &OUTER_FIELDS,
        };
        let mut enc = Encoder::with_first_type_id(TypeId(80));
        enc.assign_type_ids(&INNERS, TypeId(65));
        enc.encode(&OUTER, |w| {
            let s = w.begin_struct();
            s.end();
        });
        let bytes = enc.into_bytes();
        let mut dec = Decoder::new(&bytes);
        assert_eq!(dec.next_value(), Ok(Some(Value::Struct(vec![]))));
        let types = dec.types();
        assert!(
            matches!(types.get(TypeId(65)), Some(WireType::Struct { name, .. }) if name == "Inner")
        );
        assert!(matches!(
            types.get(TypeId(66)),
            Some(WireType::Slice {
                elem: TypeId(65),
                ..
            })
        ));
        assert!(
            matches!(types.get(TypeId(80)), Some(WireType::Struct { name, .. }) if name == "Outer")
        );
        assert!(matches!(
            types.get(TypeId(81)),
            Some(WireType::Slice {
                elem: TypeId::STRING,
                ..
            })
        ));
        assert_eq!(types.len(), 4);

        // Overlapping ranges still never reuse an id.
        let mut enc = Encoder::with_first_type_id(TypeId(65));
        enc.assign_type_ids(&INNERS, TypeId(65));
        enc.encode(&OUTER, |w| w.begin_struct().end());
        let bytes = enc.into_bytes();
        let mut dec = Decoder::new(&bytes);
        assert!(dec.next_value().is_ok());
        assert_eq!(dec.types().len(), 4);
    }

    #[test]
    fn struct_writer_omits_zero_fields_and_reader_skips_unknown_ones() {
        static FIELDS: [FieldDesc; 3] = [
            FieldDesc {
                name: "A",
                ty: &TypeDesc::Uint,
            },
            FieldDesc {
                name: "B",
                ty: &TypeDesc::String,
            },
            FieldDesc {
                name: "C",
                ty: &TypeDesc::Int,
            },
        ];
        static T: TypeDesc = TypeDesc::Struct {
            name: "t",
            fields: &FIELDS,
        };
        let mut enc = Encoder::new();
        enc.encode(&T, |w| {
            let mut s = w.begin_struct();
            s.uint(0, 0);
            s.string(1, "x");
            s.int(2, -3);
            s.end();
        });
        let bytes = enc.into_bytes();
        let mut dec = Decoder::new(&bytes);
        let mut top = dec.next_top().unwrap().unwrap();
        let mut s = top.slot().unwrap().into_struct().unwrap();
        let (name, slot) = s.next_field().unwrap().unwrap();
        assert_eq!(name, "B");
        slot.skip().unwrap();
        let (name, slot) = s.next_field().unwrap().unwrap();
        assert_eq!(name, "C");
        assert_eq!(slot.int(), Ok(-3));
        assert!(s.next_field().unwrap().is_none());
        top.finish().unwrap();
    }
}
