"""XECBench: a workbench for machine learning on the MEG II liquid-xenon calorimeter.

Modules: :mod:`xecbench.geometry` (faces, channel maps, hex graph, 3D sensor model),
:mod:`xecbench.data` (toy simulation, ROOT/npz I/O, normalisation, datasets),
:mod:`xecbench.nn` (encoders and the masked autoencoder), :mod:`xecbench.viz` (event display).
"""

__version__ = "0.1.0"
