#!/usr/bin/python3
"""PyTorch reference of UNITER (Chen et al., ECCV 2020) for the Go port.

This file mirrors the module structure of the official implementation
(ChenRocks/UNITER: model/model.py, model/layer.py, model/pretrain.py) so that
`state_dict()` keys are exactly the official checkpoint names (those of the
released uniter-base.pt and uniter-large.pt).  Differences from the official code, none
of which changes the numbers in fp32:
  * apex FusedLayerNorm is replaced by torch.nn.LayerNorm (eps 1e-12, fp32
    statistics), which computes the same function.
  * UniterConfig accepts two optional extension keys, `img_dim` (default 2048)
    and `img_label_dim` (default 1601); the official code passes them as
    constructor arguments (IMG_DIM / IMG_LABEL_DIM constants).
  * Helpers for the 7-d box input and the gather_index / attn_masks layout
    (the official data/data.py collate logic) live here too.

Details that matter for numerical equality (read from the official code):
  * word_embeddings and mask_embedding are nn.Embedding(..., padding_idx=0):
    row 0 never receives a gradient.  init_weights() overwrites row 0 with
    N(0, 0.02), so the word-embedding row 0 is NOT zero; mask_embedding row 0
    is forced to 0 (through .data) on every forward that has img_masks.
  * init_weights() is applied twice (by UniterModel and again by
    UniterForPretraining); only the RNG stream is affected.
  * The MLM decoder weight IS the word embedding parameter and
    feat_regress.weight IS img_linear.weight (state_dict holds both names).
  * feat_regress output = hidden @ img_linear.weight + bias
    (F.linear(hidden, weight.t(), bias)).
  * Attention mask: (1 - mask) * -10000 added to the scaled scores.
  * GELU is the exact erf form.

Run directly for a self-check of the base config key names and counts.
"""
import copy
import json
import math

import torch
from torch import nn
from torch.nn import functional as F

IMG_DIM = 2048
IMG_LABEL_DIM = 1601

LayerNorm = nn.LayerNorm  # stands in for apex FusedLayerNorm


# --------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------
class UniterConfig(object):
    """Official UniterConfig (model/model.py) plus img_dim / img_label_dim."""

    def __init__(self,
                 vocab_size_or_config_json_file,
                 hidden_size=768,
                 num_hidden_layers=12,
                 num_attention_heads=12,
                 intermediate_size=3072,
                 hidden_act="gelu",
                 hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512,
                 type_vocab_size=2,
                 initializer_range=0.02,
                 img_dim=IMG_DIM,
                 img_label_dim=IMG_LABEL_DIM):
        # extension keys (may be overridden by the JSON below)
        self.img_dim = img_dim
        self.img_label_dim = img_label_dim
        if isinstance(vocab_size_or_config_json_file, str):
            with open(vocab_size_or_config_json_file, "r",
                      encoding="utf-8") as reader:
                json_config = json.loads(reader.read())
            for key, value in json_config.items():
                self.__dict__[key] = value
        elif isinstance(vocab_size_or_config_json_file, int):
            self.vocab_size = vocab_size_or_config_json_file
            self.hidden_size = hidden_size
            self.num_hidden_layers = num_hidden_layers
            self.num_attention_heads = num_attention_heads
            self.hidden_act = hidden_act
            self.intermediate_size = intermediate_size
            self.hidden_dropout_prob = hidden_dropout_prob
            self.attention_probs_dropout_prob = attention_probs_dropout_prob
            self.max_position_embeddings = max_position_embeddings
            self.type_vocab_size = type_vocab_size
            self.initializer_range = initializer_range
        else:
            raise ValueError("First argument must be either a vocabulary size "
                             "(int) or the path to a pretrained model config "
                             "file (str)")

    @classmethod
    def from_dict(cls, json_object):
        config = UniterConfig(vocab_size_or_config_json_file=-1)
        for key, value in json_object.items():
            config.__dict__[key] = value
        return config

    @classmethod
    def from_json_file(cls, json_file):
        with open(json_file, "r", encoding="utf-8") as reader:
            text = reader.read()
        return cls.from_dict(json.loads(text))

    @classmethod
    def base(cls, **kw):
        c = dict(vocab_size=28996, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072,
                 hidden_act="gelu", hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1,
                 max_position_embeddings=512, type_vocab_size=2,
                 initializer_range=0.02)
        c.update(kw)
        return cls.from_dict(c)

    @classmethod
    def large(cls, **kw):
        c = dict(hidden_size=1024, num_hidden_layers=24,
                 num_attention_heads=16, intermediate_size=4096)
        c.update(kw)
        return cls.base(**c)

    def __repr__(self):
        return str(self.to_json_string())

    def to_dict(self):
        return copy.deepcopy(self.__dict__)

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


# --------------------------------------------------------------------------
# BERT layers (model/layer.py)
# --------------------------------------------------------------------------
def gelu(x):
    """Exact erf GELU."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def swish(x):
    return x * torch.sigmoid(x)


ACT2FN = {"gelu": gelu, "relu": torch.nn.functional.relu, "swish": swish}


class GELU(nn.Module):
    def forward(self, input_):
        return gelu(input_)


class BertSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError("hidden size %d not a multiple of heads %d" % (
                config.hidden_size, config.num_attention_heads))
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = int(
            config.hidden_size / config.num_attention_heads)
        self.all_head_size = (self.num_attention_heads
                              * self.attention_head_size)
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads,
                                       self.attention_head_size)
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        mixed_query_layer = self.query(hidden_states)
        mixed_key_layer = self.key(hidden_states)
        mixed_value_layer = self.value(hidden_states)

        query_layer = self.transpose_for_scores(mixed_query_layer)
        key_layer = self.transpose_for_scores(mixed_key_layer)
        value_layer = self.transpose_for_scores(mixed_value_layer)

        attention_scores = torch.matmul(query_layer,
                                        key_layer.transpose(-1, -2))
        attention_scores = attention_scores / math.sqrt(
            self.attention_head_size)
        attention_scores = attention_scores + attention_mask
        attention_probs = nn.Softmax(dim=-1)(attention_scores)
        attention_probs = self.dropout(attention_probs)

        context_layer = torch.matmul(attention_probs, value_layer)
        context_layer = context_layer.permute(0, 2, 1, 3).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (
            self.all_head_size,)
        return context_layer.view(*new_context_layer_shape)


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, input_tensor, attention_mask):
        self_output = self.self(input_tensor, attention_mask)
        return self.output(self_output, input_tensor)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        if isinstance(config.hidden_act, str):
            self.intermediate_act_fn = ACT2FN[config.hidden_act]
        else:
            self.intermediate_act_fn = config.hidden_act

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return self.LayerNorm(hidden_states + input_tensor)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, attention_mask):
        attention_output = self.attention(hidden_states, attention_mask)
        intermediate_output = self.intermediate(attention_output)
        return self.output(intermediate_output, attention_output)


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        first_token_tensor = hidden_states[:, 0]
        return self.activation(self.dense(first_token_tensor))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        if isinstance(config.hidden_act, str):
            self.transform_act_fn = ACT2FN[config.hidden_act]
        else:
            self.transform_act_fn = config.hidden_act
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, hidden_states):
        hidden_states = self.dense(hidden_states)
        hidden_states = self.transform_act_fn(hidden_states)
        return self.LayerNorm(hidden_states)


class BertLMPredictionHead(nn.Module):
    def __init__(self, config, bert_model_embedding_weights):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(bert_model_embedding_weights.size(1),
                                 bert_model_embedding_weights.size(0),
                                 bias=False)
        self.decoder.weight = bert_model_embedding_weights  # tied
        self.bias = nn.Parameter(
            torch.zeros(bert_model_embedding_weights.size(0)))

    def forward(self, hidden_states):
        hidden_states = self.transform(hidden_states)
        return self.decoder(hidden_states) + self.bias


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config, bert_model_embedding_weights):
        super().__init__()
        self.predictions = BertLMPredictionHead(config,
                                                bert_model_embedding_weights)

    def forward(self, sequence_output):
        return self.predictions(sequence_output)


# --------------------------------------------------------------------------
# UNITER backbone (model/model.py)
# --------------------------------------------------------------------------
class UniterPreTrainedModel(nn.Module):
    def __init__(self, config, *inputs, **kwargs):
        super().__init__()
        if not isinstance(config, UniterConfig):
            raise ValueError("config must be a UniterConfig")
        self.config = config

    def init_weights(self, module):
        """Linear/Embedding weight ~ N(0, initializer_range); LN 1/0;
        Linear bias 0 (as the official init_weights)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0,
                                       std=self.config.initializer_range)
        elif isinstance(module, LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    @staticmethod
    def rename_legacy_keys(state_dict):
        """gamma->weight, beta->bias (as official from_pretrained)."""
        out = {}
        for k, v in state_dict.items():
            nk = k
            if 'gamma' in nk:
                nk = nk.replace('gamma', 'weight')
            if 'beta' in nk:
                nk = nk.replace('beta', 'bias')
            out[nk] = v
        return out


class UniterTextEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size,
                                            config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size,
                                                  config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, position_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        words_embeddings = self.word_embeddings(input_ids)
        position_embeddings = self.position_embeddings(position_ids)
        token_type_embeddings = self.token_type_embeddings(token_type_ids)
        embeddings = (words_embeddings
                      + position_embeddings
                      + token_type_embeddings)
        embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


class UniterImageEmbeddings(nn.Module):
    def __init__(self, config, img_dim):
        super().__init__()
        self.img_linear = nn.Linear(img_dim, config.hidden_size)
        self.img_layer_norm = LayerNorm(config.hidden_size, eps=1e-12)
        self.pos_layer_norm = LayerNorm(config.hidden_size, eps=1e-12)
        self.pos_linear = nn.Linear(7, config.hidden_size)
        self.mask_embedding = nn.Embedding(2, img_dim, padding_idx=0)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, img_feat, img_pos_feat, type_embeddings,
                img_masks=None):
        if img_masks is not None:
            self.mask_embedding.weight.data[0, :].fill_(0)
            mask = self.mask_embedding(img_masks.long())
            img_feat = img_feat + mask
        transformed_im = self.img_layer_norm(self.img_linear(img_feat))
        transformed_pos = self.pos_layer_norm(self.pos_linear(img_pos_feat))
        embeddings = transformed_im + transformed_pos + type_embeddings
        embeddings = self.LayerNorm(embeddings)
        return self.dropout(embeddings)


class UniterEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        layer = BertLayer(config)
        self.layer = nn.ModuleList([copy.deepcopy(layer)
                                    for _ in range(config.num_hidden_layers)])

    def forward(self, input_, attention_mask,
                output_all_encoded_layers=True):
        all_encoder_layers = []
        hidden_states = input_
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask)
            if output_all_encoded_layers:
                all_encoder_layers.append(hidden_states)
        if not output_all_encoded_layers:
            all_encoder_layers.append(hidden_states)
        return all_encoder_layers


class UniterModel(UniterPreTrainedModel):
    """Joint vision-language encoder. forward() returns the list of layer
    outputs (or the last one); the pooler is applied by the heads."""

    def __init__(self, config, img_dim=None):
        super().__init__(config)
        if img_dim is None:
            img_dim = getattr(config, 'img_dim', IMG_DIM)
        self.embeddings = UniterTextEmbeddings(config)
        self.img_embeddings = UniterImageEmbeddings(config, img_dim)
        self.encoder = UniterEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self.init_weights)

    def _compute_txt_embeddings(self, input_ids, position_ids,
                                txt_type_ids=None):
        return self.embeddings(input_ids, position_ids, txt_type_ids)

    def _compute_img_embeddings(self, img_feat, img_pos_feat, img_masks=None,
                                img_type_ids=None):
        if img_type_ids is None:
            img_type_ids = torch.ones_like(img_feat[:, :, 0].long())
        img_type_embeddings = self.embeddings.token_type_embeddings(
            img_type_ids)
        return self.img_embeddings(img_feat, img_pos_feat,
                                   img_type_embeddings, img_masks)

    def _compute_img_txt_embeddings(self, input_ids, position_ids,
                                    img_feat, img_pos_feat,
                                    gather_index, img_masks=None,
                                    txt_type_ids=None, img_type_ids=None):
        txt_emb = self._compute_txt_embeddings(
            input_ids, position_ids, txt_type_ids)
        img_emb = self._compute_img_embeddings(
            img_feat, img_pos_feat, img_masks, img_type_ids)
        # align back to most compact input
        gather_index = gather_index.unsqueeze(-1).expand(
            -1, -1, self.config.hidden_size)
        return torch.gather(torch.cat([txt_emb, img_emb], dim=1),
                            dim=1, index=gather_index)

    def forward(self, input_ids, position_ids,
                img_feat, img_pos_feat,
                attention_mask, gather_index=None, img_masks=None,
                output_all_encoded_layers=True,
                txt_type_ids=None, img_type_ids=None):
        extended_attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        extended_attention_mask = extended_attention_mask.to(
            dtype=next(self.parameters()).dtype)
        extended_attention_mask = (1.0 - extended_attention_mask) * -10000.0

        if input_ids is None:
            # image only
            embedding_output = self._compute_img_embeddings(
                img_feat, img_pos_feat, img_masks, img_type_ids)
        elif img_feat is None:
            # text only
            embedding_output = self._compute_txt_embeddings(
                input_ids, position_ids, txt_type_ids)
        else:
            embedding_output = self._compute_img_txt_embeddings(
                input_ids, position_ids, img_feat, img_pos_feat,
                gather_index, img_masks, txt_type_ids, img_type_ids)

        encoded_layers = self.encoder(
            embedding_output, extended_attention_mask,
            output_all_encoded_layers=output_all_encoded_layers)
        if not output_all_encoded_layers:
            encoded_layers = encoded_layers[-1]
        return encoded_layers


# --------------------------------------------------------------------------
# pretraining heads (model/pretrain.py)
# --------------------------------------------------------------------------
class RegionFeatureRegression(nn.Module):
    """MRFR head: net = Linear(H,H), GELU, LN(H);
    out = F.linear(h, img_linear.weight.t(), bias) = h @ W_img_linear + b."""

    def __init__(self, hidden_size, feat_dim, img_linear_weight):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size),
                                 GELU(),
                                 LayerNorm(hidden_size, eps=1e-12))
        self.weight = img_linear_weight  # tied Parameter [H, feat_dim]
        self.bias = nn.Parameter(torch.zeros(feat_dim))

    def forward(self, input_):
        hidden = self.net(input_)
        return F.linear(hidden, self.weight.t(), self.bias)


class RegionClassification(nn.Module):
    """MRC head: Linear(H,H), GELU, LN(H), Linear(H,label_dim)."""

    def __init__(self, hidden_size, label_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size),
                                 GELU(),
                                 LayerNorm(hidden_size, eps=1e-12),
                                 nn.Linear(hidden_size, label_dim))

    def forward(self, input_):
        return self.net(input_)


class UniterForPretraining(UniterPreTrainedModel):
    """UNITER pretraining model: backbone `uniter` + heads `cls`,
    `feat_regress`, `region_classifier`, `itm_output`."""

    def __init__(self, config, img_dim=None, img_label_dim=None):
        super().__init__(config)
        if img_dim is None:
            img_dim = getattr(config, 'img_dim', IMG_DIM)
        if img_label_dim is None:
            img_label_dim = getattr(config, 'img_label_dim', IMG_LABEL_DIM)
        self.uniter = UniterModel(config, img_dim)
        self.cls = BertOnlyMLMHead(
            config, self.uniter.embeddings.word_embeddings.weight)
        self.feat_regress = RegionFeatureRegression(
            config.hidden_size, img_dim,
            self.uniter.img_embeddings.img_linear.weight)
        self.region_classifier = RegionClassification(
            config.hidden_size, img_label_dim)
        self.itm_output = nn.Linear(config.hidden_size, 2)
        self.apply(self.init_weights)

    @staticmethod
    def _compute_masked_hidden(hidden, mask):
        mask = mask.unsqueeze(-1).expand_as(hidden)
        return hidden[mask].contiguous().view(-1, hidden.size(-1))

    # convenience wrappers returning scores (compute_loss=False paths)
    def mlm_scores(self, sequence_output, txt_mask):
        """txt_mask [B, T] bool over the text part (Tmax = input_ids.size(1))."""
        seq = sequence_output[:, :txt_mask.size(1), :]
        return self.cls(self._compute_masked_hidden(seq, txt_mask))

    def mrfr_pred(self, sequence_output, img_mask_tgt):
        return self.feat_regress(
            self._compute_masked_hidden(sequence_output, img_mask_tgt))

    def mrc_scores(self, sequence_output, img_mask_tgt):
        return self.region_classifier(
            self._compute_masked_hidden(sequence_output, img_mask_tgt))

    def itm_scores(self, sequence_output):
        return self.itm_output(self.uniter.pooler(sequence_output))


# --------------------------------------------------------------------------
# data helpers (data/data.py collate logic)
# --------------------------------------------------------------------------
def boxes_7d(norm_bb):
    """[..., 6] norm_bb [x1,y1,x2,y2,w,h] -> [..., 7] [x1,y1,x2,y2,w,h,w*h].
    The product is taken in the input dtype (fp16 in the original, where the
    stored norm_bb is fp16)."""
    return torch.cat([norm_bb, norm_bb[..., 4:5] * norm_bb[..., 5:6]], dim=-1)


def get_gather_index(txt_lens, num_bbs, batch_size, max_len, out_size):
    """Official data.get_gather_index: txt_lens include [CLS]/[SEP];
    max_len = Tmax (padded text length), out_size = S = max(tl+nbb)."""
    assert len(txt_lens) == len(num_bbs) == batch_size
    gather_index = torch.arange(0, out_size, dtype=torch.long,
                                ).unsqueeze(0).repeat(batch_size, 1)
    for i, (tl, nbb) in enumerate(zip(txt_lens, num_bbs)):
        gather_index.data[i, tl:tl+nbb] = torch.arange(max_len, max_len+nbb,
                                                       dtype=torch.long).data
    return gather_index


def build_joint_layout(txt_lens, num_bbs, max_txt_len=None):
    """Returns (attn_masks [B,S] int64, gather_index [B,S] int64, S)."""
    B = len(txt_lens)
    if max_txt_len is None:
        max_txt_len = max(txt_lens)
    S = max(t + n for t, n in zip(txt_lens, num_bbs))
    attn = torch.zeros(B, S, dtype=torch.long)
    for i, (t, n) in enumerate(zip(txt_lens, num_bbs)):
        attn[i, :t + n] = 1
    gi = get_gather_index(list(txt_lens), list(num_bbs), B, max_txt_len, S)
    return attn, gi, S


def lengths_to_mask(lens, max_len=None):
    """[B] lengths -> [B, max_len] int64 mask with 1 on the first len_i."""
    if max_len is None:
        max_len = max(lens)
    m = torch.zeros(len(lens), max_len, dtype=torch.long)
    for i, n in enumerate(lens):
        m[i, :n] = 1
    return m


def state_dict_params(model):
    """Map every state_dict key to its Parameter object (tied parameters
    appear under every name, as in state_dict)."""
    out = {}
    for mname, mod in model.named_modules():
        for pname, p in mod._parameters.items():
            if p is None:
                continue
            key = (mname + '.' if mname else '') + pname
            out[key] = p
    return out


# --------------------------------------------------------------------------
# self-check
# --------------------------------------------------------------------------
OFFICIAL_BACKBONE = [
    "uniter.embeddings.word_embeddings.weight",
    "uniter.embeddings.position_embeddings.weight",
    "uniter.embeddings.token_type_embeddings.weight",
    "uniter.embeddings.LayerNorm.weight",
    "uniter.embeddings.LayerNorm.bias",
    "uniter.img_embeddings.img_linear.weight",
    "uniter.img_embeddings.img_linear.bias",
    "uniter.img_embeddings.img_layer_norm.weight",
    "uniter.img_embeddings.img_layer_norm.bias",
    "uniter.img_embeddings.pos_layer_norm.weight",
    "uniter.img_embeddings.pos_layer_norm.bias",
    "uniter.img_embeddings.pos_linear.weight",
    "uniter.img_embeddings.pos_linear.bias",
    "uniter.img_embeddings.mask_embedding.weight",
    "uniter.img_embeddings.LayerNorm.weight",
    "uniter.img_embeddings.LayerNorm.bias",
]
LAYER_KEYS = [
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
]
OFFICIAL_HEADS = [
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "feat_regress.weight", "feat_regress.bias",
    "feat_regress.net.0.weight", "feat_regress.net.0.bias",
    "feat_regress.net.2.weight", "feat_regress.net.2.bias",
    "region_classifier.net.0.weight", "region_classifier.net.0.bias",
    "region_classifier.net.2.weight", "region_classifier.net.2.bias",
    "region_classifier.net.3.weight", "region_classifier.net.3.bias",
    "itm_output.weight", "itm_output.bias",
]


def official_keys(num_layers):
    keys = list(OFFICIAL_BACKBONE)
    for i in range(num_layers):
        keys += ["uniter.encoder.layer.%d.%s" % (i, k) for k in LAYER_KEYS]
    keys += ["uniter.pooler.dense.weight", "uniter.pooler.dense.bias"]
    return keys + list(OFFICIAL_HEADS)


def _self_check():
    torch.manual_seed(0)
    for name, cfg, n_keys, n_backbone in (
            ("base", UniterConfig.base(), 230, 109898752),
            ("large", UniterConfig.large(), 422, 335695872)):
        model = UniterForPretraining(cfg)
        sd = model.state_dict()
        keys = list(sd.keys())
        if name == "base":
            for k in keys:
                print("  %-60s %s" % (k, list(sd[k].shape)))
        assert set(keys) == set(official_keys(cfg.num_hidden_layers)), (
            set(keys) ^ set(official_keys(cfg.num_hidden_layers)))
        n_bb = sum(p.numel() for p in model.uniter.parameters())
        n_all = sum(p.numel() for p in model.parameters())  # de-duplicated
        print("%s: %d state_dict keys (spec %d); backbone params %d "
              "(spec %d); all unique params %d" % (
                  name, len(keys), n_keys, n_bb, n_backbone, n_all))
        assert len(keys) == n_keys, (len(keys), n_keys)
        assert n_bb == n_backbone, (n_bb, n_backbone)
        assert (model.cls.predictions.decoder.weight
                is model.uniter.embeddings.word_embeddings.weight)
        assert (model.feat_regress.weight
                is model.uniter.img_embeddings.img_linear.weight)
        del model, sd
    # the gather_index example of docs/data.md, "Batches"
    gi = get_gather_index([3, 5], [3, 1], 2, 5, 6)
    assert gi.tolist() == [[0, 1, 2, 5, 6, 7], [0, 1, 2, 3, 4, 5]], gi
    print("self-check OK")


if __name__ == "__main__":
    _self_check()
