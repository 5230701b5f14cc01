"""The review texts, labels and request the benchmarks share: light to import (no torch), for workers too."""

from app.params import GenerationParams

LABELS = ["物流", "价格", "质量", "客服", "包装", "外观", "退换货", "功能", "尺码", "味道"]
TEXTS = [
    "快递三天才到，外包装箱都压扁了，好在里面的东西没坏。",
    "这款保温杯用了一个月，保温效果还不错，就是杯盖有点漏水，希望商家能改进一下。",
    "衣服穿上很合身，但颜色和图片差别有点大，实物偏暗。",
    "请问这个型号的吸尘器能不能换滤网？在哪里可以买到配件？",
    "联系了三次客服都没人回复，申请退货也一直没有处理，体验非常差。",
    "同样的耳机别家便宜五十块，音质差不多，感觉有点不值这个价。",
]

# The unit of work: one text, 3 sampled variants of 32 new tokens each. Engines are held to the
# full length (random weights rarely stop, and every arm must write as much); a server cannot be, so
# bench.serving sends the same count and length without the floor.
VARIANTS, NEW_TOKENS = 3, 32
REQUEST = GenerationParams(num_return_sequences=VARIANTS, max_length=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
