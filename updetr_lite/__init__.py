"""updetr-lite: UP-DETR (Dai et al., CVPR 2021) in plain PyTorch, from notebook to paper scale.

Where each part of the paper lives (module: symbol):

  DETR detector, the model being pre-trained (Sec. 3)  models/detr.py: DETR; models/transformer.py
  CNN backbone, GAP patch feature p (Sec. 3, Fig. 2)   models/backbone.py: Backbone.patch_feature
  Random query patches: sampled, cropped, augmented    data/query_patches.py: sample_patch_boxes,
    (Sec. 3.1, Fig. 2; no flip)                          crop_patches, patch_augmentation
  Pretext data: image + M patches + their boxes        data/pretext.py: PretextDataset
    the same patches, batched on the GPU (paper)       data/device_patches.py: DevicePatches
  Patch feature added to N/M object queries (Fig. 2)   models/updetr.py: UPDETR.forward_features
  'roi' patch feature (lite deviation: RoIAlign)       models/updetr.py: UPDETR.roi_patch_feature
  Hungarian matching, DETR's cost (Sec. 3.1)         models/matcher.py: HungarianMatcher, cost_terms
  Pretext loss Eq. (1), balance M/N, L_rec Eq. (2)     models/criterion.py: SetCriterion
  Frozen pre-training backbone (Sec. 3.1.2, Table 4)   config.py: model.frozen_cnn;
                                                         models/build.py: cnn_trains
  Attention mask Eq. (3) (Sec. 3.2.1, Fig. 6)          models/updetr.py: group_attention_mask
  Object query shuffle (Sec. 3.2.2)                    models/updetr.py: UPDETR(query_shuffle=)
  Query patch dropout 10 % (Sec. 3.2.2)                models/updetr.py: UPDETR(patch_dropout=)
  Pre-training -> fine-tuning init (Sec. 4)            models/weights.py: init_detr_from_pretext
  Training loop of both stages                         engine/train.py: train
    one optimizer step (engine, bench, demo)           engine/step.py: train_step
  COCO AP (Tables 1-4, Figures 1, 3, 4)                engine/evaluate.py: evaluate
  Unsupervised localization of patches (Fig. 5)        engine/inference.py: localize_patches;
                                                         models/updetr.py: localize
  ImageNet normalisation of every CNN input            data/images.py: normalize
  Settings: paper / lite / smoke presets               presets.py: paper, lite, smoke;
                                                         config.py: Config, get_config
  Speed switches (not the paper's arithmetic)          fastpath.py: enable (model.fast_path)
  Training logs (log.jsonl)                            jsonl.py: read_jsonl
  A checkpoint (the kit's or the authors') as a model  engine/loading.py: load_model

The command line is cli/ (``updetr-lite --help``); the tutorial notebooks use viz.py and the
tutorial/ package (the patch-localization demo, what the notebooks check, their runner). The
reproduction of Tables 1-4 and Figures 1, 3-6 (plans, papermill runs, the report) is not part
of the library: it is the checkout's ``reproduce`` package (``python -m reproduce.run``),
which calls this one.
"""
