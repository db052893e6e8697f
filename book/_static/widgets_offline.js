// Loaded between require.js and the ipywidgets HTML manager (embed-amd.js), both
// served from this site's _static/vendor/ (see `make book`), so widgets work offline.
(function () {
  // 1. Resolve the HTML manager's AMD modules, and the fonts its CSS asks for, from
  //    _static/vendor/html-manager/ instead of a path relative to the page.
  var here = document.currentScript && document.currentScript.src;
  if (here && window.require && window.require.config) {
    var vendor = here.slice(0, here.lastIndexOf("/") + 1) + "vendor/";
    window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": vendor + "html-manager" } });
  }

  // 2. html-manager 1.x typesets widget labels with the MathJax 2 API
  //    (MathJax.Hub.Queue); this site ships MathJax 3. Route those calls to
  //    MathJax 3's typesetPromise, now and again after MathJax 3 replaces window.MathJax.
  function hub() {
    return {
      Queue: function (cmd) {
        var el = cmd && cmd[2];
        var mj = window.MathJax;
        if (el && mj && mj.typesetPromise) { mj.typesetPromise([el]).catch(function () {}); }
      }
    };
  }
  window.MathJax = window.MathJax || {};
  window.MathJax.Hub = hub();
  var startup = (window.MathJax.startup = window.MathJax.startup || {});
  var ready = startup.ready;
  startup.ready = function () {
    if (ready) { ready(); } else { window.MathJax.startup.defaultReady(); }
    window.MathJax.Hub = hub();
  };
})();
