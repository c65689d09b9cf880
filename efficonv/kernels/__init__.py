"""Pure functions on arrays: every efficient-convolution scheme, once.

Inputs are NHWC, kernels HWIO, options follow :func:`jax.lax.conv_general_dilated`.
"""

from efficonv.kernels._options import effective_size as effective_size
from efficonv.kernels._options import output_size as output_size
from efficonv.kernels._options import pad_input as pad_input
from efficonv.kernels._options import pair as pair
from efficonv.kernels._options import resolve_padding as resolve_padding
from efficonv.kernels.conv import conv as conv
from efficonv.kernels.conv import conv_valid as conv_valid
from efficonv.kernels.conv import pointwise as pointwise
from efficonv.kernels.dense import DENSE_AUTO_RULES as DENSE_AUTO_RULES
from efficonv.kernels.dense import DENSE_IMPLEMENTATIONS as DENSE_IMPLEMENTATIONS
from efficonv.kernels.dense import dense_implementation as dense_implementation
from efficonv.kernels.depthwise import depthwise as depthwise
from efficonv.kernels.depthwise import depthwise_implementation as depthwise_implementation
from efficonv.kernels.depthwise import depthwise_shift as depthwise_shift
from efficonv.kernels.depthwise import depthwise_valid as depthwise_valid
from efficonv.kernels.depthwise import depthwise_xla as depthwise_xla
from efficonv.kernels.factorized import cp_conv as cp_conv
from efficonv.kernels.factorized import separable_conv as separable_conv
from efficonv.kernels.factorized import spatial_conv as spatial_conv
from efficonv.kernels.factorized import tt_conv as tt_conv
from efficonv.kernels.factorized import tucker2_conv as tucker2_conv
from efficonv.kernels.reconstruct import cp_to_dense as cp_to_dense
from efficonv.kernels.reconstruct import separable_to_dense as separable_to_dense
from efficonv.kernels.reconstruct import spatial_to_dense as spatial_to_dense
from efficonv.kernels.reconstruct import tt_to_dense as tt_to_dense
from efficonv.kernels.reconstruct import tucker2_to_dense as tucker2_to_dense
from efficonv.kernels.shapes import Geometry as Geometry
from efficonv.kernels.shapes import conv_geometry as conv_geometry
from efficonv.kernels.shapes import dense_macs as dense_macs
