//! Burn record files (`BinFileRecorder`: bincode's standard configuration), read defensively.
//!
//! Burn 0.21 decodes a record with bincode straight from the file: a corrupt length field makes
//! it allocate that many bytes before reading them (a length larger than memory aborts the
//! process), and a tensor whose bytes do not fit its shape and dtype panics when it is converted.
//! Checkpoints are user files (a disk that filled up during a write, a copy cut short, a file
//! from another run), so kdlora decodes them itself into the same serde types: every length is
//! checked against the bytes left in the file before anything is allocated, every tensor's byte
//! count against its shape and dtype before Burn sees it, and what still runs of Burn's own code
//! (turning the decoded item into tensors) runs under `catch_unwind`.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::record::{BurnRecord, FullPrecisionSettings, Record};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::error::{Result, TrainError};

/// The extension `BinFileRecorder` gives its files.
const EXTENSION: &str = "bin";

/// Largest `time` (step count) of an AdamW state: Burn casts it to `i32` and adds one per step.
pub(crate) const MAX_OPTIMIZER_TIME: usize = i32::MAX as usize - 1;

/// The error for a checkpoint file that exists but cannot be used.
pub(crate) fn damaged(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::DamagedCheckpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The file `BinFileRecorder` reads for `base` (it replaces the extension with `.bin`).
pub(crate) fn record_path(base: &Path) -> PathBuf {
    base.with_extension(EXTENSION)
}

/// Reads the record Burn's `BinFileRecorder::<FullPrecisionSettings>` wrote for `base`
/// (`base.bin`), without letting a damaged file panic or abort the process.
pub(crate) fn load_record<B: Backend, R: Record<B>>(base: &Path, device: &B::Device) -> Result<R> {
    let path = record_path(base);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let item = decode::<BurnRecord<R::Item<FullPrecisionSettings>, B>>(&bytes)
        .map_err(|e| damaged(&path, e.to_string()))?;
    catch_unwind(AssertUnwindSafe(|| {
        R::from_item::<FullPrecisionSettings>(item.item, device)
    }))
    .map_err(|payload| damaged(&path, panic_text(payload.as_ref())))
}

/// Loads the record at `base` into `module`, and checks that every parameter kept its shape
/// (Burn takes a record's tensors as they are, so a mis-shaped one would fail only in the
/// first forward pass).
pub(crate) fn load_module<B: Backend, M: Module<B>>(
    module: M,
    base: &Path,
    device: &B::Device,
) -> Result<M> {
    let path = record_path(base);
    let before = shapes::<B, M>(&module);
    let record = load_record::<B, M::Record>(base, device)?;
    let module = catch_unwind(AssertUnwindSafe(|| module.load_record(record)))
        .map_err(|payload| damaged(&path, panic_text(payload.as_ref())))?;
    let after = shapes::<B, M>(&module);
    if before.len() != after.len() {
        return Err(damaged(
            &path,
            format!(
                "holds {} parameters, the model has {} (checkpoint from another run?)",
                after.len(),
                before.len()
            ),
        ));
    }
    for ((name, expected), (_, found)) in before.iter().zip(&after) {
        if expected != found {
            return Err(damaged(
                &path,
                format!(
                    "{name} has shape {found:?}, the model's is {expected:?} (checkpoint from \
                     another run?)"
                ),
            ));
        }
    }
    Ok(module)
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a value Burn cannot use".into());
    format!("Burn could not use its content ({text})")
}

/// Every parameter of a module with its shape, in visiting order.
fn shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl Shapes {
        fn push(&mut self, dims: Vec<usize>) {
            self.out.push((self.path.join("."), dims));
        }
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.push(param.val().dims().to_vec());
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
            self.push(param.val().dims().to_vec());
        }
        fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
            self.push(param.val().dims().to_vec());
        }
    }
    let mut visitor = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

// ---------------------------------------------------------------------------------------------
// bincode (standard configuration: little endian, variable-length integers), as serde sees it
// ---------------------------------------------------------------------------------------------

/// Why a record could not be decoded, with where in the record it happened.
#[derive(Debug)]
pub(crate) struct DecodeError {
    message: String,
    /// Field path (`item.bert.encoder...`), filled in on the way out.
    at: Option<String>,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some(at) if !at.is_empty() => write!(f, "{at}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            at: None,
        }
    }
}

type DResult<T> = std::result::Result<T, DecodeError>;

/// Decodes a whole file as `T`; bytes left over are an error too.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> DResult<T> {
    let mut decoder = Decoder {
        input: bytes,
        pos: 0,
        path: Vec::new(),
        param_id_next: false,
    };
    // Burn's own deserialisation code runs inside (tensor conversion): a panic there is a
    // damaged file, not a crash.
    let value = catch_unwind(AssertUnwindSafe(|| T::deserialize(&mut decoder)))
        .map_err(|payload| <DecodeError as de::Error>::custom(panic_text(payload.as_ref())))??;
    if decoder.pos != bytes.len() {
        return Err(de::Error::custom(format!(
            "{} bytes after the end of the record (of {})",
            bytes.len() - decoder.pos,
            bytes.len()
        )));
    }
    Ok(value)
}

struct Decoder<'de> {
    input: &'de [u8],
    pos: usize,
    path: Vec<String>,
    /// The next string is a parameter id (a `ParamSerde`'s `id`, a key of an id-keyed map):
    /// Burn parses it with a panic on anything else.
    param_id_next: bool,
}

const SINGLE_BYTE_MAX: u8 = 250;
const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;
const U128_BYTE: u8 = 254;

impl<'de> Decoder<'de> {
    fn left(&self) -> usize {
        self.input.len() - self.pos
    }

    fn error(&self, message: String) -> DecodeError {
        DecodeError {
            message,
            at: Some(self.path.join(".")),
        }
    }

    fn take(&mut self, n: usize) -> DResult<&'de [u8]> {
        if n > self.left() {
            return Err(self.error(format!(
                "needs {n} bytes at offset {} but the file ends {} bytes later (truncated?)",
                self.pos,
                self.left()
            )));
        }
        let input: &'de [u8] = self.input;
        let bytes = &input[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> DResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> DResult<u128> {
        Ok(match self.byte()? {
            b @ 0..=SINGLE_BYTE_MAX => b as u128,
            U16_BYTE => u16::from_le_bytes(self.array()?) as u128,
            U32_BYTE => u32::from_le_bytes(self.array()?) as u128,
            U64_BYTE => u64::from_le_bytes(self.array()?) as u128,
            U128_BYTE => u128::from_le_bytes(self.array()?),
            other => return Err(self.error(format!("invalid integer tag {other}"))),
        })
    }

    fn unsigned<T: TryFrom<u128>>(&mut self, what: &str) -> DResult<T> {
        let value = self.varint()?;
        T::try_from(value).map_err(|_| self.error(format!("{value} is too large for a {what}")))
    }

    fn signed<T: TryFrom<i128>>(&mut self, what: &str) -> DResult<T> {
        let n = self.varint()?;
        let value = if n % 2 == 0 {
            (n / 2) as i128
        } else {
            !((n / 2) as i128)
        };
        T::try_from(value).map_err(|_| self.error(format!("{value} is out of range for a {what}")))
    }

    /// A length, checked against the bytes left: every element of a record's sequences, maps and
    /// strings takes at least one byte, so a longer one cannot be real (and is never allocated).
    fn length(&mut self, what: &str) -> DResult<usize> {
        let len: u128 = self.varint()?;
        if len > self.left() as u128 {
            return Err(self.error(format!(
                "{what} of length {len} at offset {}, but only {} bytes are left (truncated or \
                 corrupt)",
                self.pos,
                self.left()
            )));
        }
        Ok(len as usize)
    }

    /// Looks ahead at a `TensorData` (`bytes`, `shape`, `dtype`) and checks that its bytes are
    /// exactly its shape times its element size, before Burn converts it.
    fn check_tensor(&self) -> DResult<()> {
        let mut ahead = Decoder {
            input: self.input,
            pos: self.pos,
            path: self.path.clone(),
            param_id_next: false,
        };
        let n_bytes = ahead.length("tensor data")?;
        ahead.take(n_bytes)?;
        let rank = ahead.length("tensor shape")?;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(ahead.unsigned::<usize>("dimension")?);
        }
        let variant: u32 = ahead.unsigned("dtype")?;
        // Burn's `DType` in declaration order; a `Bool` names how it is stored.
        let (name, size) = match variant {
            0 => ("F64", 8),
            1 => ("F32", 4),
            2 => ("Flex32", 4),
            3 => ("F16", 2),
            4 => ("BF16", 2),
            5 => ("I64", 8),
            6 => ("I32", 4),
            7 => ("I16", 2),
            8 => ("I8", 1),
            9 => ("U64", 8),
            10 => ("U32", 4),
            11 => ("U16", 2),
            12 => ("U8", 1),
            13 => match ahead.unsigned::<u32>("bool store")? {
                0 | 1 => ("Bool", 1),
                2 => ("Bool(U32)", 4),
                other => return Err(ahead.error(format!("unknown bool storage {other}"))),
            },
            // kdlora never quantizes its checkpoints.
            14 => return Err(ahead.error("a quantized tensor (kdlora writes none)".into())),
            other => return Err(ahead.error(format!("unknown tensor dtype {other}"))),
        };
        let expected = dims
            .iter()
            .try_fold(size as u128, |acc, &d| acc.checked_mul(d as u128));
        if expected != Some(n_bytes as u128) {
            return Err(self.error(format!(
                "tensor of shape {dims:?} and dtype {name} has {n_bytes} bytes of data, not {}",
                expected.map_or_else(|| "a size that fits in memory".into(), |e| e.to_string())
            )));
        }
        Ok(())
    }

    /// Runs `f` with `name` pushed on the field path, and records the path in an error that has
    /// none yet.
    fn at<T>(&mut self, name: String, f: impl FnOnce(&mut Self) -> DResult<T>) -> DResult<T> {
        self.path.push(name);
        let result = f(self).map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some(self.path.join("."));
            }
            e
        });
        self.path.pop();
        result
    }

    /// Decodes one named element; `param_id` says it is a parameter id (checked as one).
    fn decode_at<T: DeserializeSeed<'de>>(
        &mut self,
        name: String,
        param_id: bool,
        seed: T,
    ) -> DResult<T::Value> {
        self.at(name, |de| {
            de.param_id_next = param_id;
            let value = seed.deserialize(&mut *de);
            de.param_id_next = false;
            value
        })
    }
}

macro_rules! unsigned {
    ($de:lifetime, $method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<$de>>(self, visitor: V) -> DResult<V::Value> {
            visitor.$visit(self.unsigned::<$ty>(stringify!($ty))?)
        }
    };
}

macro_rules! signed {
    ($de:lifetime, $method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<$de>>(self, visitor: V) -> DResult<V::Value> {
            visitor.$visit(self.signed::<$ty>(stringify!($ty))?)
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> DResult<V::Value> {
        Err(self.error("the record asks for a self-describing value, which bincode has not".into()))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            other => Err(self.error(format!("invalid boolean {other}"))),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        visitor.visit_i8(self.byte()? as i8)
    }

    signed!('de, deserialize_i16, visit_i16, i16);
    signed!('de, deserialize_i32, visit_i32, i32);
    signed!('de, deserialize_i64, visit_i64, i64);
    signed!('de, deserialize_i128, visit_i128, i128);

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        visitor.visit_u8(self.byte()?)
    }

    unsigned!('de, deserialize_u16, visit_u16, u16);
    unsigned!('de, deserialize_u32, visit_u32, u32);
    unsigned!('de, deserialize_u64, visit_u64, u64);
    unsigned!('de, deserialize_u128, visit_u128, u128);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let first = self.byte()?;
        let width = match first {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return Err(self.error(format!("invalid character byte {first:#x}"))),
        };
        let start = self.pos - 1;
        self.take(width - 1)?;
        let c = std::str::from_utf8(&self.input[start..self.pos])
            .ok()
            .and_then(|s| s.chars().next())
            .ok_or_else(|| self.error("invalid character".into()))?;
        visitor.visit_char(c)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let len = self.length("string")?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| self.error(format!("string is not UTF-8 ({e})")))?;
        if std::mem::take(&mut self.param_id_next) && ParamId::try_deserialize(text).is_none() {
            return Err(self.error(format!("{text:?} is not a parameter id")));
        }
        visitor.visit_borrowed_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let len = self.length("byte string")?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let len = self.length("byte string")?;
        visitor.visit_byte_buf(self.take(len)?.to_vec())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            other => Err(self.error(format!("invalid option tag {other}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> DResult<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> DResult<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let len = self.length("sequence")?;
        visitor.visit_seq(Elements {
            de: self,
            left: len,
            fields: None,
            index: 0,
            ids: false,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> DResult<V::Value> {
        visitor.visit_seq(Elements {
            de: self,
            left: len,
            fields: None,
            index: 0,
            ids: false,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> DResult<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> DResult<V::Value> {
        let len = self.length("map")?;
        visitor.visit_map(Entries {
            de: self,
            left: len,
            index: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        if name == "TensorData" && fields == ["bytes", "shape", "dtype"] {
            self.check_tensor()?;
        }
        visitor.visit_seq(Elements {
            de: self,
            left: fields.len(),
            fields: Some(fields),
            index: 0,
            ids: name == "ParamSerde",
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        let index: u32 = self.unsigned("enum variant")?;
        let Some(variant) = variants.get(index as usize) else {
            return Err(self.error(format!(
                "variant {index} of an enum with {} variants",
                variants.len()
            )));
        };
        self.at(variant.to_string(), |de| {
            visitor.visit_enum(Variant { de, index })
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> DResult<V::Value> {
        Err(self.error("the record asks for an identifier, which bincode has not".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> DResult<V::Value> {
        Err(self.error("the record asks to skip a value, which bincode cannot".into()))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct (fields in declaration order).
struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
    fields: Option<&'static [&'static str]>,
    index: usize,
    /// A `ParamSerde`, whose `id` field is a parameter id.
    ids: bool,
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> DResult<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let name = match self.fields {
            Some(fields) => fields[self.index].to_string(),
            None => format!("[{}]", self.index),
        };
        self.index += 1;
        let id = self.ids && name == "id";
        self.de.decode_at(name, id, seed).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // A hint only: visitors that preallocate from it then stay small.
        Some(self.left.min(1024))
    }
}

struct Entries<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: usize,
    index: usize,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> DResult<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let name = format!("[entry {}]", self.index);
        // The maps of kdlora's records (optimizer states) are keyed by parameter id.
        self.de.decode_at(name, true, seed).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> DResult<V::Value> {
        let name = format!("[entry {}]", self.index);
        self.index += 1;
        self.de.at(name, |de| seed.deserialize(&mut *de))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(1024))
    }
}

struct Variant<'a, 'de> {
    de: &'a mut Decoder<'de>,
    index: u32,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a, 'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> DResult<(V::Value, Self)> {
        let index: de::value::U32Deserializer<DecodeError> = self.index.into_deserializer();
        let value = seed.deserialize(index)?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_, 'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> DResult<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> DResult<T::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> DResult<V::Value> {
        de::Deserializer::deserialize_tuple(&mut *self.de, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> DResult<V::Value> {
        de::Deserializer::deserialize_struct(&mut *self.de, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::record::{BinFileRecorder, Recorder};
    use burn::tensor::TensorData;

    type NB = NdArray<f32>;

    #[derive(Module, Debug)]
    struct Tiny<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        bias: Param<Tensor<B, 1>>,
    }

    fn tiny(rows: usize) -> Tiny<NB> {
        let device = Default::default();
        let values: Vec<f32> = (0..rows * 3).map(|i| i as f32).collect();
        Tiny {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [rows, 3]),
                &device,
            )),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.5f32; 3], [3]),
                &device,
            )),
        }
    }

    /// A record Burn wrote, as bytes (and the folder holding it).
    fn saved(rows: usize) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        Recorder::<NB>::record(&recorder, tiny(rows).into_record(), dir.path().join("m")).unwrap();
        let bytes = std::fs::read(dir.path().join("m.bin")).unwrap();
        (dir, bytes)
    }

    fn load(dir: &Path, bytes: &[u8]) -> Result<Tiny<NB>> {
        std::fs::write(dir.join("m.bin"), bytes).unwrap();
        load_module::<NB, _>(tiny(2), &dir.join("m"), &Default::default())
    }

    #[test]
    fn reads_what_burn_writes() {
        let (dir, bytes) = saved(2);
        let model = load(dir.path(), &bytes).unwrap();
        let values = model.weight.val().into_data().to_vec::<f32>().unwrap();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    /// Every truncation and every single-byte change (to a huge length byte, 0xfd, the u64
    /// tag) is a `DamagedCheckpoint` error or a model of the right shapes; none panics or
    /// allocates the length it reads. Burn's own decoder aborts or panics on some of these.
    #[test]
    fn damaged_records_are_errors_never_panics() {
        let (dir, bytes) = saved(2);
        for n in 0..bytes.len() {
            let err = load(dir.path(), &bytes[..n]).unwrap_err();
            assert!(
                matches!(err, TrainError::DamagedCheckpoint { .. }),
                "{n}: {err}"
            );
        }
        for i in 0..bytes.len() {
            for value in [0xfd, 0xff, 0x00, bytes[i].wrapping_add(1)] {
                let mut damaged = bytes.clone();
                damaged[i] = value;
                if i + 9 <= damaged.len() && value == 0xfd {
                    damaged[i + 1..i + 9].copy_from_slice(&u64::MAX.to_le_bytes());
                }
                if let Err(err) = load(dir.path(), &damaged) {
                    assert!(
                        matches!(err, TrainError::DamagedCheckpoint { .. }),
                        "{i}={value}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_of_other_shapes_names_the_parameter() {
        let (dir, bytes) = saved(4);
        let err = load(dir.path(), &bytes).unwrap_err().to_string();
        assert!(err.contains("m.bin is damaged"), "{err}");
        assert!(err.contains("weight has shape [4, 3]"), "{err}");
    }

    #[test]
    fn tensor_bytes_must_fit_shape_and_dtype() {
        let (dir, bytes) = saved(2);
        // The bias's data length (12 bytes of F32) is a single varint byte; make it 8.
        let pattern = [12u8, 0, 0, 0, 63];
        let at = bytes
            .windows(pattern.len())
            .position(|w| w == pattern)
            .expect("the bias data in the record");
        let mut damaged = bytes.clone();
        damaged.remove(at + 1);
        damaged.remove(at + 1);
        damaged.remove(at + 1);
        damaged.remove(at + 1);
        damaged[at] = 8;
        let err = load(dir.path(), &damaged).unwrap_err().to_string();
        assert!(err.contains("bias"), "{err}");
        assert!(err.contains("has 8 bytes of data, not 12"), "{err}");
    }
}
