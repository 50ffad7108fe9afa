from .frontend import FRAMES_PER_STEP, ConvSubsampling, LogMelFrontend  # noqa: F401
from .quantizer import RandomProjectionQuantizer  # noqa: F401
