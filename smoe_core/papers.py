"""The papers this package implements and reproduces, cited everywhere by the keys below (``[AS-SMoE]``, ...).

The texts (converted from PDF) are the specification; notes on the authors' code are in the docstrings of the
modules that follow it.
"""

#: key -> full reference
PAPERS = {
    "AS-SMoE": ("Yi-Hsin Li, Sebastian Knorr, Mårten Sjöström, Thomas Sikora: Adaptive Segmentation-Based "
                "Initialization for Steered Mixture of Experts Image Regression. Manuscript, 2024 "
                "(received 16 September 2024). Code: github.com/yihsinli/AS-SMoE."),
    "S-SMoE": ("Yi-Hsin Li, Mårten Sjöström, Sebastian Knorr, Thomas Sikora: Segmentation-Based Initialization for "
               "Steered Mixture of Experts. 2023 IEEE International Conference on Visual Communications and Image "
               "Processing (VCIP), pp. 1-5, 2023."),
    "EDGE": ("Martin Determann, Elvira Fleig: Edge-Aligned Initialization of Kernels for Steered Mixture of "
             "Experts. Communication Systems Group, Technische Universität Berlin (preprint)."),
    "R-SMoE": ("Yi-Hsin Li, Mårten Sjöström, Sebastian Knorr, Thomas Sikora: Rasterized Steered Mixture of "
               "Experts for Efficient 2D Image Regression (abstract and figure captions; preprint)."),
    "QSMoE": ("Rolf Jongebloed, Erik Bochinski, Lieven Lange, Thomas Sikora: Quantized and Regularized "
              "Optimization for Coding Images Using Steered Mixtures-of-Experts. 2019 Data Compression "
              "Conference (DCC), pp. 359-368, 2019. Code: github.com/roljon/Steered-Mixture-of-Experts."),
    "N-SMoE": ("Neural Steered Mixture of Experts for Medical Image Denoising, and Super-Resolution (preprint; "
               "abstract only in our copy, which does not list the authors). Code: github.com/anatolicvs/n-smoe."),
    "SPARSE": ("Erik Bochinski, Rolf Jongebloed, Michael Tok, Thomas Sikora: Regularized Gradient Descent Training "
               "of Steered Mixture of Experts for Sparse Image Representation. 2018 25th IEEE International "
               "Conference on Image Processing (ICIP), pp. 3873-3877, 2018."),
    "VERHACK": ("Ruben Verhack, Thomas Sikora, Lieven Lange, Glenn Van Wallendael, Peter Lambert: A Universal Image "
                "Coding Approach Using Sparse Steered Mixture-of-Experts Regression. 2016 IEEE International "
                "Conference on Image Processing (ICIP), pp. 2142-2146, 2016."),
}

#: nicknames used in older docstrings and notes -> key
NICKNAMES = {
    "the segmentation paper": "AS-SMoE", "the adaptive-segmentation paper": "AS-SMoE",
    "the edge paper": "EDGE", "the edge-aligned paper": "EDGE",
    "the rasterized paper": "R-SMoE", "the rasterized abstract": "R-SMoE",
    "the coding paper": "QSMoE", "the N-SMoE paper": "N-SMoE",
}


def cite(key: str) -> str:
    """The full reference of a paper by its key (ValueError naming the known keys otherwise)."""
    try:
        return PAPERS[key]
    except KeyError:
        raise ValueError(f"unknown paper {key!r} (known: {', '.join(PAPERS)})") from None
