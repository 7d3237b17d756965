"""The paper's numbers (He et al. 2016, section 4.2, Table 6) that our tables and figures meet."""

PAPER_DATASETS = ("cifar10", "cifar10_jpeg")  # the paper's numbers apply here (ours: its JPEG copy)
REFERENCE_KIND = "residual"  # the block kind whose errors the paper's Table 6 gives
# Table 6: ResNet test error (%) on CIFAR-10; parameter counts as the paper prints them.
# For ResNet-110 the paper gives the best of 5 runs (6.43) and their mean ± std; ours are means
# over seeds (or one run), so they meet the paper's mean.
PAPER_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.61, 1202: 7.93}
PAPER_TEST_STD = {110: 0.16}
PAPER_TEST_CELL = {110: "6.61 ± 0.16 (mean of 5; best 6.43)"}
PAPER_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}
