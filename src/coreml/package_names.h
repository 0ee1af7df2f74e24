/* package_names.h — fixed names inside an .mlpackage, matching what coremltools writes so that
   coremltools-based tools find our weights (it looks up the item named "weights" by the
   author "com.apple.CoreML"). */
#ifndef SDC_PACKAGE_NAMES_H
#define SDC_PACKAGE_NAMES_H

#define SDC_PACKAGE_AUTHOR "com.apple.CoreML"
#define SDC_MODEL_FILE "Data/com.apple.CoreML/model.mlmodel"
#define SDC_WEIGHTS_DIR "Data/com.apple.CoreML/weights"
#define SDC_WEIGHT_FILE_REF "@model_path/weights/weight.bin"

#endif
