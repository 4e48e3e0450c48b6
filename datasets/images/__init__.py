"""Image bags: per sample, a bag of patch feature vectors ``[N, D]`` or of raw patches ``[N, C, H, W]``.

A sample's bag may come from several slides; the bag is their union, in the order the slides were given,
and each patch keeps its slide id, its 0-based position within that slide and its coordinates.

Nothing is read in full at construction: ``.npy`` files are memory-mapped (only the header is parsed),
``.h5`` files are opened for the dataset shape only, tile images are opened for their size only. ``.pt``
files have no header, so they are loaded once to read their shape and then dropped. Data are read by
:meth:`ImageBags.load`, one sample at a time, so a cohort larger than memory still trains.

File rules
----------
- ``.npy``: an array ``[N, D]`` (features) or ``[N, C, H, W]`` / ``[C, H, W]`` (pixels).
- ``.pt``: a tensor/array ``[N, D]``, or a dict with ``"features"`` and optional ``"coords"`` ``[N, 2]``;
  read with ``torch.load(weights_only=True)``.
- ``.h5`` / ``.hdf5``: dataset ``features`` ``[N, D]`` and optional dataset ``coords`` ``[N, 2]`` (CLAM,
  TRIDENT), or ``feats`` and ``coords`` in micrometres (STAMP); see :mod:`.feature_readers` for every
  extractor layout (``format=``) and :mod:`.geometry` for the coordinate frame each slide is given in.
- ``<slide>.zarr`` (a folder): a LazySlide / wsidata SpatialData store, read by :mod:`.lazyslide`.
- Slide embeddings (1-D ``features``) load as one-token bags; :func:`.slide_vectors.slide_embeddings`
  turns them into a per-patient DataFrame of numeric columns instead.
- A directory given to :meth:`ImageBags.from_features`: each file ``<sample>.npy|.pt|.h5`` is a one-slide
  bag of sample ``<sample>`` (slide id = sample id); each sub-directory ``<sample>/`` holds one file per slide
  of that sample (slide id = file stem). Sample ids are file stems, never split on dots.
- A directory given to :meth:`ImageBags.from_patches`: each sub-directory ``<sample>/`` is a folder of tile
  images (one slide named like the folder); each image or ``.npy`` file ``<sample>.<ext>`` is a one-slide bag.
- Slide ids: file stem for files, folder name for tile folders, ``"slideK"`` for in-memory arrays (K =
  place in
  the sample's list). Coordinates stored in ``.pt`` files are kept in memory (``[N, 2]`` is small).
"""

from .bags import ImageBag, ImageBags
from .feature_readers import FORMATS as FEATURE_FORMATS
from .geometry import SlideGeometry
from .readers import FEATURE_SUFFIXES, IMAGE_SUFFIXES
from .slide_vectors import slide_embeddings

__all__ = ["FEATURE_FORMATS", "FEATURE_SUFFIXES", "IMAGE_SUFFIXES", "ImageBag", "ImageBags", "SlideGeometry",
           "slide_embeddings"]
