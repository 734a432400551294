//! Reading a checkpoint back, trusting nothing in it until it has been checked: the
//! manifest (bounded, checksummed, its rules), then each file it names (opened inside the
//! checkpoint's directory only, exactly the declared length, CRC-32, safetensors header,
//! every tensor's dtype and shape).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use safetensors::SafeTensors;

use super::manifest::{MANIFEST, MANIFEST_MAX_BYTES, MODEL_FILE, Manifest, OPTIMIZER_FILE};
use super::write::st_dtype;
use super::{HostTensor, Snapshot, fail, parse_step};
use crate::Result;
use crate::files::Dir;

/// Reads and verifies the checkpoint at `path` (a `step-…` directory).
pub fn read_checkpoint(path: &Path) -> Result<Snapshot> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let root = Dir::open(parent).map_err(|e| fail(parent, format!("open: {e}")))?;
    read_in(&root, name)
}

/// Reads and verifies checkpoint `name` of the directory `root`.
pub(super) fn read_in(root: &Dir, name: &str) -> Result<Snapshot> {
    load(root, name, true)
}

/// Verifies checkpoint `name` of `root` the way [`read_in`] does, without keeping a copy
/// of its tensors (pruning only needs the verdict).
pub(super) fn verify_in(root: &Dir, name: &str) -> Result<()> {
    load(root, name, false).map(|_| ())
}

/// Reads checkpoint `name` and checks everything; the tensors' bytes are copied out only
/// when `keep`.
fn load(root: &Dir, name: &str, keep: bool) -> Result<Snapshot> {
    let path = root.path().join(name);
    let Some(step) = parse_step(name) else {
        return Err(fail(&path, "not a checkpoint's name (step- and nine or more digits)"));
    };
    let dir = root.open_dir(name).map_err(|e| fail(&path, e.to_string()))?;
    let text = dir
        .read_file(MANIFEST, MANIFEST_MAX_BYTES)
        .map_err(|e| fail(&path, format!("read manifest: {e}")))?;
    let manifest = Manifest::parse(&text, step).map_err(|e| fail(&path, e))?;
    let mut groups: HashMap<&str, Vec<HostTensor>> = HashMap::new();
    for entry in &manifest.files {
        let file = path.join(&entry.name);
        let bytes =
            dir.read_exact_len(&entry.name, entry.bytes).map_err(|e| fail(&path, e.to_string()))?;
        let crc = crc32fast::hash(&bytes);
        if crc != entry.crc32 {
            return Err(fail(
                &file,
                format!("CRC-32 {crc:08x}, the manifest says {:08x} (corrupted)", entry.crc32),
            ));
        }
        let wanted: Vec<_> = manifest.tensors.iter().filter(|t| t.file == entry.name).collect();
        groups.insert(entry.name.as_str(), tensors_of(&bytes, &wanted, &file, keep)?);
    }
    let mut take = |name: &str| groups.remove(name).unwrap_or_default();
    Ok(Snapshot {
        step: manifest.step,
        params: take(MODEL_FILE),
        optimizer_step: manifest.optimizer_step,
        optimizer: take(OPTIMIZER_FILE),
        state: manifest.state,
    })
}

/// The tensors of one safetensors file, which must hold exactly those the manifest lists,
/// with its dtypes and shapes.
fn tensors_of(
    bytes: &[u8],
    wanted: &[&super::manifest::TensorEntry],
    file: &Path,
    keep: bool,
) -> Result<Vec<HostTensor>> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| fail(file, format!("safetensors: {e}")))?;
    let listed: HashSet<&str> = wanted.iter().map(|t| t.name.as_str()).collect();
    if let Some(extra) = st.names().into_iter().find(|n| !listed.contains(&**n)) {
        return Err(fail(file, format!("holds {extra}, which the manifest does not list")));
    }
    let mut list = Vec::with_capacity(wanted.len());
    for want in wanted {
        let (dtype, _) = want.dtype_and_bytes().map_err(|e| fail(file, e))?;
        let view = st.tensor(&want.name).map_err(|e| fail(file, format!("{}: {e}", want.name)))?;
        if view.dtype() != st_dtype(dtype) {
            return Err(fail(
                file,
                format!("{}: dtype {:?} is not the manifest's {}", want.name, view.dtype(), dtype),
            ));
        }
        if view.shape() != want.shape.as_slice() {
            return Err(fail(
                file,
                format!(
                    "{}: shape {:?}, the manifest says {:?}",
                    want.name,
                    view.shape(),
                    want.shape
                ),
            ));
        }
        list.push(HostTensor {
            name: want.name.clone(),
            dtype,
            dims: want.shape.clone(),
            bytes: if keep { view.data().to_vec() } else { Vec::new() },
        });
    }
    Ok(list)
}
