// The mongo shell's BSON types, as server-side JavaScript sees them. Conversions in convert.rs
// recognise these constructors with instanceof, so a value keeps its BSON type both ways.
"use strict";
(function (g) {
  function def(name, ctor, proto) {
    Object.keys(proto).forEach(function (k) {
      Object.defineProperty(ctor.prototype, k, { value: proto[k], writable: true });
    });
    Object.defineProperty(g, name, { value: ctor, enumerable: false });
  }
  function ObjectId(hex) {
    if (!(this instanceof ObjectId)) return new ObjectId(hex);
    if (hex === undefined) throw new Error("ObjectId() needs a 24-character hex string here");
    if (typeof hex !== "string" || !/^[0-9a-fA-F]{24}$/.test(hex))
      throw new Error("invalid object id: length");
    this.str = hex.toLowerCase();
  }
  def("ObjectId", ObjectId, {
    toString: function () { return 'ObjectId("' + this.str + '")'; },
    toJSON: function () { return { $oid: this.str }; },
    valueOf: function () { return this.str; },
    equals: function (o) { return o instanceof ObjectId && o.str === this.str; },
    getTimestamp: function () { return new Date(parseInt(this.str.substr(0, 8), 16) * 1000); },
  });
  function NumberLong(v) {
    if (!(this instanceof NumberLong)) return new NumberLong(v);
    var s = v === undefined ? "0" : String(v);
    if (!/^-?\d+$/.test(s)) s = String(Math.trunc(Number(s)));
    this.__long = s;
    this.floatApprox = Number(s);
  }
  def("NumberLong", NumberLong, {
    toString: function () { return "NumberLong(" + this.__long + ")"; },
    toNumber: function () { return this.floatApprox; },
    valueOf: function () { return this.floatApprox; },
    toJSON: function () { return { $numberLong: this.__long }; },
  });
  function NumberInt(v) {
    if (!(this instanceof NumberInt)) return new NumberInt(v);
    this.__int = Number(v === undefined ? 0 : v) | 0;
  }
  def("NumberInt", NumberInt, {
    toString: function () { return "NumberInt(" + this.__int + ")"; },
    toNumber: function () { return this.__int; },
    valueOf: function () { return this.__int; },
    toJSON: function () { return this.__int; },
  });
  function NumberDecimal(v) {
    if (!(this instanceof NumberDecimal)) return new NumberDecimal(v);
    this.__decimal = v === undefined ? "0" : String(v);
  }
  def("NumberDecimal", NumberDecimal, {
    toString: function () { return 'NumberDecimal("' + this.__decimal + '")'; },
    valueOf: function () { return Number(this.__decimal); },
    toJSON: function () { return { $numberDecimal: this.__decimal }; },
  });
  function Timestamp(t, i) {
    if (!(this instanceof Timestamp)) return new Timestamp(t, i);
    this.t = t === undefined ? 0 : t >>> 0;
    this.i = i === undefined ? 0 : i >>> 0;
  }
  def("Timestamp", Timestamp, {
    toString: function () { return "Timestamp(" + this.t + ", " + this.i + ")"; },
  });
  function BinData(type, base64) {
    if (!(this instanceof BinData)) return new BinData(type, base64);
    this.type = type | 0;
    this.base64 = String(base64);
  }
  def("BinData", BinData, {
    toString: function () { return 'BinData(' + this.type + ',"' + this.base64 + '")'; },
  });
  function MinKey() { if (!(this instanceof MinKey)) return new MinKey(); }
  def("MinKey", MinKey, { toString: function () { return "MinKey"; } });
  function MaxKey() { if (!(this instanceof MaxKey)) return new MaxKey(); }
  def("MaxKey", MaxKey, { toString: function () { return "MaxKey"; } });
  function tojson(v) { return JSON.stringify(v); }
  Object.defineProperty(g, "tojson", { value: tojson, enumerable: false });
  Object.defineProperty(g, "isNumber", {
    value: function (x) { return typeof x === "number"; }, enumerable: false,
  });
  Object.defineProperty(g, "isString", {
    value: function (x) { return typeof x === "string"; }, enumerable: false,
  });
  Object.defineProperty(g, "isObject", {
    value: function (x) { return typeof x === "object" && x !== null; }, enumerable: false,
  });
  Object.defineProperty(g, "Array", { value: Array, writable: false });
  Object.defineProperty(Array, "sum", {
    value: function (arr) { var s = 0; for (var i = 0; i < arr.length; i++) s += arr[i]; return s; },
  });
  Object.defineProperty(Array, "avg", {
    value: function (arr) { return arr.length ? Array.sum(arr) / arr.length : undefined; },
  });
})(globalThis);
