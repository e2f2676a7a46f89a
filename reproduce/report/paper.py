"""The paper's numbers (R50, its Tables 1-4), the metrics each table prints, and its claims."""

# The paper's numbers (R50). Keys: "<table>/<row>"; AP metrics in percent.
PAPER: dict[str, dict[str, float]] = {
    # Table 1: PASCAL VOC trainval07+12 -> test2007
    "table1/Faster R-CNN": {"AP": 56.1, "AP50": 82.6, "AP75": 62.7},
    "table1/DETR/150": {"AP": 49.9, "AP50": 74.5, "AP75": 53.1},
    "table1/UP-DETR/150": {"AP": 56.1, "AP50": 79.7, "AP75": 60.6},
    "table1/DETR/300": {"AP": 54.1, "AP50": 78.0, "AP75": 58.3},
    "table1/UP-DETR/300": {"AP": 57.2, "AP50": 80.1, "AP75": 62.0},
    # Table 2: COCO train2017 -> val2017 (SwAV CNN)
    "table2/DETR/150": {
        "AP": 39.7,
        "AP50": 60.3,
        "AP75": 41.7,
        "APs": 18.5,
        "APm": 43.8,
        "APl": 57.5,
    },
    "table2/UP-DETR/150": {
        "AP": 40.5,
        "AP50": 60.8,
        "AP75": 42.6,
        "APs": 19.0,
        "APm": 44.4,
        "APl": 60.0,
    },
    "table2/DETR/300": {
        "AP": 42.1,
        "AP50": 63.1,
        "AP75": 44.5,
        "APs": 19.7,
        "APm": 46.3,
        "APl": 60.9,
    },
    "table2/UP-DETR/300": {
        "AP": 42.8,
        "AP50": 63.0,
        "AP75": 45.3,
        "APs": 20.8,
        "APm": 47.1,
        "APl": 61.7,
    },
    # Table 3: 15-epoch pre-training, 150-epoch VOC fine-tuning
    "table3/DETR": {"AP": 49.9, "AP50": 74.5, "AP75": 53.1},
    "table3/M=1": {"AP": 53.1, "AP50": 77.2, "AP75": 57.4},
    "table3/M=10": {"AP": 54.9, "AP50": 78.7, "AP75": 59.1},
    # Table 4: AP50 only
    "table4/DETR": {"AP50": 74.5},
    "table4/a": {"AP50": 74.0},
    "table4/b": {"AP50": 78.7},
    "table4/c": {"AP50": 62.0},
    "table4/d": {"AP50": 78.7},
}
TABLE_METRICS = {
    "table1": ("AP", "AP50", "AP75"),
    "table2": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "table3": ("AP", "AP50", "AP75"),
    "table4": ("AP", "AP50"),
}
TABLE_TITLES = {
    "table1": "Table 1: detection fine-tuning, DETR vs UP-DETR",
    "table2": "Table 2: COCO fine-tuning",
    "table3": "Table 3: single vs multiple query patches",
    "table4": "Table 4: frozen CNN and patch feature reconstruction",
}

# the paper's claims, by table: C1 pre-training helps DETR (VOC and COCO), C2 multiple query
# patches beat one, C3 the frozen CNN and the reconstruction (Table 4)
CLAIMS = {
    "table1": "C1 (Table 1, VOC)",
    "table2": "C1 (Table 2, COCO)",
    "table3": "C2 (Table 3)",
    "table4": "C3 (Table 4)",
}
CLAIM_KEYS = {"table1": ("AP", "AP50"), "table2": ("AP",), "table3": ("AP",), "table4": ("AP50",)}
