/// A tensor (being written).
pub struct Tensor;
